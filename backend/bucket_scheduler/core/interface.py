"""The contract between the scheduling core and whatever drives it.

Drivers: the torch engine (runtime/engine.py), the cost-model replay
(core/replay.py) and benchmarks. All of them call the same four methods:

    sched.add(req)                 -> bool   (False: req.state is REJECTED, req.reject_reason says why)
    out = sched.schedule(now)      -> SchedulerOutput (one iteration)
    sched.on_tokens(req_id, n, now)          (n new tokens were produced for a running request)
    sched.finish(req_id, now) / sched.cancel(req_id, now)

Iteration-level model: every engine step calls schedule(); the output names
everything the runner must add, keep and drop: the prompt tokens to prefill this
step (out.chunks: whole prompts of new admissions, or chunks of long ones under the
per-step token budget), the requests that join the running batch (out.prefill: their
prefill completes this step), the ones to preempt
(drop their KV; they are WAITING again and will be recomputed later), the
running requests that ended (finish() / cancel()) since the last schedule(), and
the full running set to decode. The scheduler owns which requests run; a driver
follows its output and repairs nothing.  A policy that runs
batches to completion (static, uellm) simply admits nothing while its batch
still runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .request import Request


@dataclass(frozen=True)
class BucketInfo:
    low: int  # inclusive
    up: int  # exclusive
    depth: int  # waiting requests in it
    n_max: int  # memory-safe batch size for it right now


@dataclass
class StepStats:
    """What one schedule() call decided, for metrics, logs and benchmarks."""

    buckets: list[BucketInfo] = field(default_factory=list)
    batch_size: int = 0  # running after this step's admissions
    num_waiting: int = 0
    num_prefill: int = 0  # requests joining the decode batch this step
    prefill_tokens: int = 0  # prompt tokens computed this step (whole prompts and chunks)
    num_prefilling: int = 0  # running requests whose prefill is not complete after this step
    num_preempted: int = 0
    bucket_low: int | None = None  # range of the bucket the batch came from (None: no grouping)
    bucket_up: int | None = None
    # Padding efficiency of the prefill batch planned this step: useful token
    # slots / computed token slots (1.0 when nothing is prefilled).
    prefill_padding_efficiency: float = 1.0
    planned_kv_bytes: int = 0  # worst-case KV of the running set
    budget_bytes: int = 0  # safe budget this step
    min_slo_slack_s: float | None = None  # least slack among waiting/running online requests
    decision_us: float = 0.0


@dataclass(frozen=True)
class PrefillChunk:
    """Prompt tokens [start, stop) of a request's (re)prefill (its prompt plus any tokens it had
    generated before a preemption) to compute this step."""

    req: Request
    start: int
    stop: int

    @property
    def tokens(self) -> int:
        return self.stop - self.start

    @property
    def whole(self) -> bool:
        """The whole prefill in one go (no chunk before or after it)."""
        return self.start == 0 and self.req.prefill_left == 0

    @property
    def last(self) -> bool:
        """Its prefill ends with this chunk: the request joins the decode batch."""
        return self.req.prefill_left == 0


@dataclass
class SchedulerOutput:
    # Requests whose prefill completes this step (whole, or its last chunk): they join the
    # decode batch and get their first token.
    prefill: list[Request] = field(default_factory=list)
    # Every prefill computation of this step, in order: whole prompts and chunks (at most
    # max_num_batched_tokens tokens together, see base.py).
    chunks: list[PrefillChunk] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)  # ids that left the running set by finish / cancel
    # Every running request after admissions: the decode set, this step's prefill, and requests
    # still being prefilled in chunks (is_prefilling: they hold a slot but do not decode).
    running: list[Request] = field(default_factory=list)
    stats: StepStats = field(default_factory=StepStats)

    @property
    def is_empty(self) -> bool:
        return not self.running


class Scheduler(Protocol):
    def add(self, req: Request) -> bool: ...

    def schedule(self, now: float) -> SchedulerOutput: ...

    def on_tokens(self, request_id: str, n: int, now: float) -> None: ...

    def finish(self, request_id: str, now: float) -> None: ...

    def cancel(self, request_id: str, now: float) -> None: ...

    def set_kv_bytes_in_use(self, nbytes: int) -> None:
        """Real bytes the runner's KV tensors hold now (reported back each step)."""
        ...

    @property
    def num_waiting(self) -> int: ...

    @property
    def num_running(self) -> int: ...

    def has_work(self) -> bool: ...
