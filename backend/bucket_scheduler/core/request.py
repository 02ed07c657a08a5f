"""The scheduler's view of a request: lengths, class, SLO targets and state."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RequestState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


class RequestClass(enum.Enum):
    ONLINE = "online"  # latency-bound: has TTFT / TPOT targets or a deadline
    OFFLINE = "offline"  # throughput-bound


TERMINAL_STATES = frozenset({RequestState.FINISHED, RequestState.CANCELLED, RequestState.REJECTED})


@dataclass(eq=False)
class Request:
    """One generation request as the scheduler sees it (no text, only lengths).

    Times are seconds on whatever clock the driver uses (engine: time.monotonic();
    replay: the cost-model clock).
    """

    request_id: str
    prompt_len: int
    max_new_tokens: int
    arrival_time: float
    req_class: RequestClass = RequestClass.OFFLINE
    priority: int = 0  # higher runs earlier among equals (the bucket policy; the baselines ignore it)
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None  # carried for the record: no policy schedules by it (metrics measure it)
    deadline: float | None = None  # absolute; if unset, arrival + slo_ttft_s for online requests
    predicted_output_len: int | None = None  # for output-length-driven policies (uellm)

    state: RequestState = RequestState.WAITING
    reject_reason: str | None = None
    num_generated: int = 0  # tokens produced so far (the engine reports them)
    # Tokens of its (re)prefill not computed yet: set at admission, counted down by the chunks
    # the scheduler plans. While > 0 the request is running (slot and memory held) but not decoding.
    prefill_left: int = 0
    first_token_time: float | None = None
    finish_time: float | None = None
    times_preempted: int = 0
    extra: dict = field(default_factory=dict)  # driver-owned payload; the core never reads it

    @property
    def is_online(self) -> bool:
        return self.req_class is RequestClass.ONLINE

    @property
    def max_total_len(self) -> int:
        """Worst-case tokens this request can hold in the KV cache."""
        return self.prompt_len + self.max_new_tokens

    @property
    def seq_len(self) -> int:
        """Tokens it holds now (prompt plus generated)."""
        return self.prompt_len + self.num_generated

    @property
    def is_prefilling(self) -> bool:
        return self.prefill_left > 0

    def effective_deadline(self) -> float | None:
        if self.deadline is not None:
            return self.deadline
        if self.slo_ttft_s is not None:
            return self.arrival_time + self.slo_ttft_s
        return None

    @property
    def is_done(self) -> bool:
        return self.state in TERMINAL_STATES
