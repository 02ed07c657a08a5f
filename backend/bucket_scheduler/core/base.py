"""Bookkeeping every policy shares: validation, the running set, memory fitting, stats.

A policy subclass keeps its own waiting structure and implements four hooks:
`_enqueue(req, requeue)`, `_dequeue(req)` (cancel of a waiting request),
`_num_waiting()` and `_admit(now, budget, out)` (start admissions with `_start`, fitting
memory with `_plus`). How much of the admitted prompts each step computes is the base's
(prefill.py: the per-step token budget and chunked prefill, the same for every policy).
"""

from __future__ import annotations

import heapq
import itertools
import time

from .interface import SchedulerOutput, StepStats
from .memory import BatchShape, MemoryPlanner
from .prefill import PrefillConfig, plan_prefill
from .request import Request, RequestState


class SchedulerBase:
    policy_name = "base"
    CONFIGS: dict[str, type] = {}  # constructor argument -> its config dataclass (factory.py)
    SHARED_CONFIGS: dict[str, type] = {"prefill": PrefillConfig}  # every policy's

    def __init__(self, planner: MemoryPlanner, max_model_len: int, max_num_seqs: int,
                 prefill: PrefillConfig = PrefillConfig()):
        if max_model_len < 1 or max_num_seqs < 1:
            raise ValueError("max_model_len and max_num_seqs must be >= 1")
        self.planner = planner
        self.prefill = prefill
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.kv_bytes_in_use = 0
        self.requests: dict[str, Request] = {}  # every waiting or running request
        self.running: list[Request] = []  # in admission order (preemption takes from the end)
        self._ended: list[str] = []  # left the running set since the last schedule()
        self._deadlines: list = []  # (deadline, seq, req) of online requests, lazily cleaned
        self._seq = itertools.count()
        self.steps = 0

    # --- protocol ------------------------------------------------------------

    def add(self, req: Request) -> bool:
        reason = self._reject_reason(req)
        if reason is not None:
            req.state = RequestState.REJECTED
            req.reject_reason = reason
            return False
        req.state = RequestState.WAITING
        self.requests[req.request_id] = req
        d = req.effective_deadline()
        if req.is_online and d is not None:
            heapq.heappush(self._deadlines, (d, next(self._seq), req))
        self._enqueue(req, requeue=False)
        return True

    def schedule(self, now: float) -> SchedulerOutput:
        t0 = time.perf_counter()
        self.steps += 1
        budget = self.planner.budget_bytes(self.kv_bytes_in_use)
        out = SchedulerOutput()
        out.ended, self._ended = self._ended, []
        self._fit_running(budget, out)
        if not out.preempted:  # memory just shrank: admit nothing this step
            self._admit(now, budget, out)
        out.chunks = plan_prefill(self.running, self.prefill)
        out.prefill = [c.req for c in out.chunks if c.last]
        out.running = list(self.running)
        self._fill_stats(now, budget, out)
        out.stats.decision_us = (time.perf_counter() - t0) * 1e6
        return out

    def on_tokens(self, request_id: str, n: int, now: float) -> None:
        req = self.requests.get(request_id)
        if req is None or req.state is not RequestState.RUNNING:
            return
        if req.first_token_time is None and n > 0:
            req.first_token_time = now
        req.num_generated += n

    def finish(self, request_id: str, now: float) -> None:
        self._end(request_id, now, RequestState.FINISHED)

    def cancel(self, request_id: str, now: float) -> None:
        self._end(request_id, now, RequestState.CANCELLED)

    def set_kv_bytes_in_use(self, nbytes: int) -> None:
        self.kv_bytes_in_use = max(0, int(nbytes))

    @property
    def num_waiting(self) -> int:
        return self._num_waiting()

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_work(self) -> bool:
        return bool(self.running) or self._num_waiting() > 0

    # --- shared pieces -------------------------------------------------------

    def _reject_reason(self, req: Request) -> str | None:
        if req.request_id in self.requests:
            return f"duplicate request_id {req.request_id!r}"
        if req.prompt_len < 1:
            return "prompt is empty"
        if req.max_new_tokens < 1:
            return f"max_tokens must be >= 1, got {req.max_new_tokens}"
        if req.max_total_len > self.max_model_len:
            return (
                f"prompt {req.prompt_len} + max_tokens {req.max_new_tokens} "
                f"exceeds max_model_len {self.max_model_len}"
            )
        return self.planner.never_fits_reason(req, self.planner.budget_bytes(self.kv_bytes_in_use),
                                              staged=self.prefill.chunking)

    def _end(self, request_id: str, now: float, state: RequestState) -> None:
        req = self.requests.pop(request_id, None)
        if req is None:
            return
        if req.state is RequestState.RUNNING:  # the request's state is the one record of it
            self.running.remove(req)
            self._ended.append(request_id)
            self._on_leave_running(req)
        else:
            self._dequeue(req)
        req.state = state
        req.finish_time = now
        if state is RequestState.FINISHED:
            self._on_finished(req)

    def _start(self, req: Request, out: SchedulerOutput) -> None:
        """Admit: it holds a slot and memory from now on; its prefill is planned after _admit."""
        req.state = RequestState.RUNNING
        req.prefill_left = req.seq_len  # the prompt, plus what it generated before a preemption
        self.running.append(req)

    def _plus(self, shape: BatchShape, req: Request) -> BatchShape:
        """The shape with `req` admitted (its staging KV counted when it may be chunked)."""
        return shape.plus(self.planner.worst_tokens(req), staged=self.prefill.chunking)

    def running_shape(self) -> BatchShape:
        w = self.planner.worst_tokens
        shape = BatchShape.of(w(r) for r in self.running)
        if self.prefill.chunking:
            shape.staged_tokens = sum(w(r) for r in self.running if r.is_prefilling)
        return shape

    @classmethod
    def configs(cls) -> dict[str, type]:
        """Constructor argument -> config dataclass, the shared ones included (factory.py)."""
        return {**cls.SHARED_CONFIGS, **cls.CONFIGS}

    def _fit_running(self, budget: int, out: SchedulerOutput) -> None:
        """Preempt the most recently admitted requests until the running set fits."""
        if not self.running or self.planner.fits(self.running_shape(), budget):
            return
        while self.running and not self.planner.fits(self.running_shape(), budget):
            req = self.running.pop()
            self._on_leave_running(req)
            req.state = RequestState.WAITING
            req.prefill_left = 0  # a half-prefilled request starts over (the runner drops its chunks)
            req.times_preempted += 1
            out.preempted.append(req)
        # latest admitted first: FIFO queues push to the front, so the earliest ends up first
        for req in out.preempted:
            self._enqueue(req, requeue=True)

    def _min_slack(self, now: float) -> float | None:
        h = self._deadlines
        while h and h[0][2].is_done:
            heapq.heappop(h)
        return (h[0][0] - now) if h else None

    def _fill_stats(self, now: float, budget: int, out: SchedulerOutput) -> None:
        st: StepStats = out.stats
        st.batch_size = len(self.running)
        st.num_waiting = self._num_waiting()
        st.num_prefill = len(out.prefill)
        st.num_preempted = len(out.preempted)
        st.prefill_tokens = sum(c.tokens for c in out.chunks)
        st.num_prefilling = sum(r.is_prefilling for r in self.running)
        if out.chunks:
            lens = [c.tokens for c in out.chunks]
            st.prefill_padding_efficiency = sum(lens) / (len(lens) * max(lens))
        st.planned_kv_bytes = self.planner.planned_bytes(self.running_shape())
        st.budget_bytes = budget
        st.min_slo_slack_s = self._min_slack(now)
        self._extra_stats(st)

    # --- hooks ---------------------------------------------------------------

    def _enqueue(self, req: Request, requeue: bool) -> None:
        raise NotImplementedError

    def _dequeue(self, req: Request) -> None:
        raise NotImplementedError

    def _num_waiting(self) -> int:
        raise NotImplementedError

    def _admit(self, now: float, budget: int, out: SchedulerOutput) -> None:
        raise NotImplementedError

    def _on_leave_running(self, req: Request) -> None:
        pass

    def _on_finished(self, req: Request) -> None:
        pass

    def _extra_stats(self, st: StepStats) -> None:
        pass
