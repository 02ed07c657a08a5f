"""One simulated GPU: a core scheduler (made by core/factory.py) stepped on the cost-model clock.

Every instance calls the same four methods the engine calls (add, schedule, on_tokens,
finish); only what a step computes and costs differs by role:

- ColocatedInstance: prefill and decode share the GPU (static, uellm, continuous,
  vLLM-style chunked prefill).  `step_mode`:
    "replay"  one step prefills the admitted requests and decodes the others, as
              core/replay.py does;
    "engine"  as our torch engine does (runtime/engine.py _run), on the scheduler's own
              per-step prefill plan (its token budget and chunking, core/prefill.py):
              (a) one batched forward per group of the whole prompts that fit this step
              (first tokens after it), (b) one batch-1 forward per chunk of a longer
              prompt (the last chunk gives its first token and joins the batch), (c) one
              decode forward over every row, the ones that joined this step included;
              priced by CostModel.engine_step_ms's terms, pass by pass.  With
              `mixed_step` and the scheduler's chunking on (the engine's condition), a step
              is ONE pass instead: every chunk of the plan (a whole prompt is one chunk,
              prefix 0) and one decode token for every row already in the batch; all
              tokens come at its end, and the prompts whose last chunk ran join the batch
              without decoding in it (CostModel.mixed_step_ms).
  `chunk_tokens` (vLLM chunked prefill): a step computes at most this many tokens,
  decode tokens first, then prompt chunks of admitted requests in admission order; a
  prompt's first token comes with its last chunk.
- PrefillInstance (disaggregated): each step prefills one batch, emits the first tokens
  and hands every request over to the decode pool; nothing stays running.
- DecodeInstance (disaggregated): continuous batching over requests whose KV arrived;
  admission costs nothing (the prompt is already computed), each step decodes all.

Times are seconds on the simulation clock; SimRecord keeps what a client would see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..clock import CostModel
from ..factory import make_scheduler
from ..memory import FixedProbe, KVSpec, MemoryPlanner
from ..prefill import PREFILL_GROUP_TOKENS, prefill_groups
from ..request import Request, RequestClass
from .workload import SimRequestSpec


@dataclass(eq=False)
class SimRecord:
    spec: SimRequestSpec
    first_token_s: float | None = None
    finish_s: float | None = None
    generated: int = 0
    rejected: str | None = None

    @property
    def rid(self) -> str:
        return f"r{self.spec.index}"

    def token(self, t: float, n: int = 1) -> None:
        if self.generated == 0 and n > 0:
            self.first_token_s = t
        self.generated += n

    @property
    def done(self) -> bool:
        return self.finish_s is not None or self.rejected is not None


@dataclass(frozen=True)
class SchedulerSpec:
    """How to build an instance's core scheduler: policy name, options and memory accounting."""

    policy: str
    options: dict
    accounting: str = "padded"  # padded (a padded runtime, the paper's formula) | per_request (paged)
    max_num_seqs: int = 64


def build_scheduler(spec: SchedulerSpec, kv: KVSpec, free_bytes: int, memory_fraction: float, max_model_len: int):
    planner = MemoryPlanner(kv, FixedProbe(free_bytes), memory_fraction=memory_fraction, accounting=spec.accounting)
    return make_scheduler(spec.policy, planner, max_model_len, spec.max_num_seqs, **spec.options)


def core_request(rec: SimRecord, prompt_len: int, max_new: int) -> Request:
    s = rec.spec
    return Request(rec.rid, prompt_len, max_new, s.arrival_s,
                   req_class=RequestClass.ONLINE if s.online else RequestClass.OFFLINE,
                   slo_ttft_s=s.slo_ttft_s, slo_tpot_s=s.slo_tpot_s)


class Instance:
    """Base: a scheduler, a cost model, the records it serves, counters."""

    role = "base"

    def __init__(self, name: str, sched, cost: CostModel, idle_tick_s: float = 0.01):
        self.name = name
        self.sched = sched
        self.cost = cost
        self.idle_tick_s = idle_tick_s
        self.records: dict[str, SimRecord] = {}
        self.busy_s = 0.0
        self.busy_until = 0.0  # end of the step in progress
        self.steps = 0
        self.preemptions = 0
        self.prefill_useful = self.prefill_computed = 0

    @property
    def outstanding(self) -> int:
        return len(self.records)

    def _add(self, rec: SimRecord, req: Request) -> bool:
        if not self.sched.add(req):
            rec.rejected = req.reject_reason or "rejected"
            return False
        self.records[req.request_id] = rec
        return True

    def _token(self, r: Request, t: float) -> None:
        """One generated token for r at time t; finishes it at its output length."""
        rec = self.records[r.request_id]
        self.sched.on_tokens(r.request_id, 1, t)
        rec.token(t)
        if rec.generated >= rec.spec.output_len:
            self.sched.finish(r.request_id, t)
            rec.finish_s = t
            del self.records[r.request_id]

    def idle_wakeup(self, now: float) -> float | None:
        """When to look again while nothing runs (a static batch waiting for its delay)."""
        if not self.sched.num_waiting:
            return None
        nxt = getattr(self.sched, "next_wakeup", None)
        t = nxt(now) if nxt else None
        return t if t is not None and t > now else now + self.idle_tick_s

    def _count_prefill(self, lens: list[int], padded: bool) -> None:
        if lens:
            self.prefill_useful += sum(lens)
            self.prefill_computed += len(lens) * max(lens) if padded else sum(lens)


class ColocatedInstance(Instance):
    role = "colocated"

    def __init__(self, name, sched, cost, step_mode: str = "replay", chunk_tokens: int | None = None,
                 prefill_group_tokens: int = PREFILL_GROUP_TOKENS, mixed_step: bool = False):
        super().__init__(name, sched, cost)
        self.prefill_group_tokens = prefill_group_tokens  # engine mode: the runner's forward size
        if step_mode not in ("replay", "engine"):
            raise ValueError(f"step_mode must be 'replay' or 'engine', got {step_mode!r}")
        self.step_mode = step_mode
        # The engine's rule (runtime/engine.py): one pass a step where every prompt may be staged.
        prefill = getattr(sched, "prefill", None)
        self.one_pass = step_mode == "engine" and mixed_step and prefill is not None and prefill.chunking
        if self.one_pass and cost.mixed is None:
            raise ValueError("a one-pass engine replay needs CostModel.mixed coefficients")
        self.chunk_tokens = chunk_tokens
        self.pending: dict[str, int] = {}  # chunked prefill: prompt tokens still to compute

    def submit(self, rec: SimRecord, now: float) -> bool:
        return self._add(rec, core_request(rec, rec.spec.prompt_len, rec.spec.output_len))

    def step(self, now: float) -> float | None:
        out = self.sched.schedule(now)
        self.preemptions += len(out.preempted)
        for r in out.preempted:
            self.pending.pop(r.request_id, None)
        if not out.running:
            return None
        self.steps += 1
        if self.chunk_tokens:
            return self._step_chunked(now, out)
        if self.one_pass:
            t = self._step_one_pass(now, out)
        elif self.step_mode == "engine":
            t = self._step_engine(now, out)
        else:
            new_ids = {r.request_id for r in out.prefill}
            pre = [c.tokens for c in out.chunks]  # whole prompts, or chunks under the scheduler's token budget
            self._count_prefill(pre, self.cost.padded)
            dec = [r.seq_len for r in out.running if r.request_id not in new_ids and not r.is_prefilling]
            t = now + self.cost.step_s(pre, dec)
            for r in out.running:
                if not r.is_prefilling:
                    self._token(r, t)
        self.busy_s += t - now
        self.busy_until = t
        return t

    def _step_engine(self, now: float, out) -> float:
        """The engine's passes in its order; each pass's tokens come at its end."""
        cost, t = self.cost, now
        whole = [c for c in out.chunks if c.whole]
        lens = [c.tokens for c in whole]
        for i, j in prefill_groups(lens, self.prefill_group_tokens):
            t += cost.prefill_ms(lens[i:j]) / 1000.0
            self._count_prefill(lens[i:j], cost.padded)
        for c in whole:
            self._token(c.req, t)
        for c in out.chunks:
            if not c.whole:
                t += cost.chunk_ms(c.start, c.tokens) / 1000.0
                self._count_prefill([c.tokens], False)
                if c.last:
                    self._token(c.req, t)
        rows = [r for r in out.running if not r.is_done and not r.is_prefilling]
        if rows:  # a row's KV holds all but its newest token, which this forward feeds in
            t += cost.decode_ms([r.seq_len - 1 for r in rows]) / 1000.0
            for r in rows:
                self._token(r, t)
        return t

    def _step_one_pass(self, now: float, out) -> float:
        """One forward: the plan's chunks and the decode of the rows already in the batch."""
        staged = {c.req.request_id for c in out.chunks}
        rows = [r for r in out.running if r.request_id not in staged and not r.is_done and not r.is_prefilling]
        chunks = [(c.start, c.tokens) for c in out.chunks]
        self._count_prefill([n for _, n in chunks], False)
        # a row's KV holds all but its newest token, which this pass feeds in
        t = now + self.cost.mixed_step_ms(chunks, [r.seq_len - 1 for r in rows]) / 1000.0
        for r in rows:
            self._token(r, t)
        for c in out.chunks:
            if c.last:
                self._token(c.req, t)
        return t

    def _step_chunked(self, now: float, out) -> float:
        for r in out.prefill:
            self.pending[r.request_id] = r.seq_len
        decoding = [r for r in out.running if r.request_id not in self.pending]
        budget = max(0, self.chunk_tokens - len(decoding))
        chunks, finishing = [], []
        for r in out.running:
            left = self.pending.get(r.request_id)
            if left is None or budget <= 0:
                continue
            n = min(left, budget)
            prefix = r.seq_len - left
            chunks.append((prefix, n))
            budget -= n
            if n == left:
                del self.pending[r.request_id]
                finishing.append(r)
            else:
                self.pending[r.request_id] = left - n
        self._count_prefill([n for _, n in chunks], False)
        t = now + (chunk_prefill_ms(self.cost, chunks) + self.cost.decode_ms([r.seq_len for r in decoding])) / 1000.0
        for r in decoding + finishing:
            self._token(r, t)
        self.busy_s += t - now
        self.busy_until = t
        return t


def chunk_prefill_ms(cost: CostModel, chunks: list[tuple[int, int]]) -> float:
    """Prefill of prompt chunks (prefix already cached, n new tokens).  The quadratic term
    c * L^2 is attention over every earlier position; a chunk's share of it is
    (p + n)^2 - p^2 = n * (2p + n), so chunks of one prompt add up to its one-shot cost
    (plus one constant term a step)."""
    if not chunks:
        return 0.0
    a, b, c = cost.prefill
    return a + b * sum(n for _, n in chunks) + c * sum(n * (2 * p + n) for p, n in chunks)


class PrefillInstance(Instance):
    role = "prefill"

    def __init__(self, name, sched, cost, handoff: Callable[[SimRecord, float], None]):
        super().__init__(name, sched, cost)
        self.handoff = handoff
        self.prompt_tokens = 0  # outstanding, for the router

    def expected_wait_ms(self, now: float) -> float:
        """Until this GPU could start a new prompt: the step in progress plus the queued prompts."""
        return max(0.0, self.busy_until - now) * 1000.0 + self.cost.prefill[1] * self.prompt_tokens

    def submit(self, rec: SimRecord, now: float) -> bool:
        # Only the prompt's KV lives here (until it is sent): one new token's worth of room.
        ok = self._add(rec, core_request(rec, rec.spec.prompt_len, 1))
        if ok:
            self.prompt_tokens += rec.spec.prompt_len
        return ok

    def step(self, now: float) -> float | None:
        out = self.sched.schedule(now)
        if not out.prefill:
            return None
        self.steps += 1
        lens = [r.seq_len for r in out.prefill]
        self._count_prefill(lens, self.cost.padded)
        t = now + self.cost.prefill_ms(lens) / 1000.0
        for r in out.prefill:
            rec = self.records.pop(r.request_id)
            self.sched.on_tokens(r.request_id, 1, t)
            self.sched.finish(r.request_id, t)
            self.prompt_tokens -= rec.spec.prompt_len
            rec.token(t)
            if rec.generated >= rec.spec.output_len:
                rec.finish_s = t
            else:
                self.handoff(rec, t)
        self.busy_s += t - now
        self.busy_until = t
        return t


class DecodeInstance(Instance):
    role = "decode"

    def submit(self, rec: SimRecord, now: float) -> bool:
        # The prompt and first token arrive as KV; the rest is generated here.
        s = rec.spec
        return self._add(rec, core_request(rec, s.prompt_len + 1, s.output_len - 1))

    def step(self, now: float) -> float | None:
        out = self.sched.schedule(now)
        self.preemptions += len(out.preempted)
        if not out.running:
            return None
        self.steps += 1
        t = now + self.cost.decode_ms([r.seq_len for r in out.running]) / 1000.0
        for r in out.running:
            self._token(r, t)
        self.busy_s += t - now
        self.busy_until = t
        return t
