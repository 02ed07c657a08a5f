"""`uellm`: UELLM's SLO- and output-length-driven batching (SLO-ODBS), online form.

Whenever the engine is free (nothing running), the waiting requests are taken
in order of `key = deadline + 0.5 * predicted_output_len` (seconds and tokens
added as plain numbers, as in UELLM's code; deadline = Request.effective_deadline(),
or arrival + default_deadline_s when a request has none), and the first group
is grown greedily: q joins while the group has fewer than `group_size` (10)
members and `(q.out - cur_max) * (len(group) + 1) * 1.2 <= padding_limit` (15000),
cur_max being the group's longest predicted output (a q that does not raise
cur_max always joins).  That group runs to completion; nothing joins it.

The keys never change after a request is queued, so a heap holds them and
forming a group pops at most group_size + 1 entries.  Beyond UELLM, the group
is also cut at max_num_seqs and at the memory budget (no policy may run out of
memory here).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

from .base import SchedulerBase
from .interface import SchedulerOutput
from .memory import BatchShape, MemoryPlanner
from .predictor import OutputLengthPredictor, make_predictor
from .prefill import PrefillConfig
from .request import Request, RequestState


@dataclass(frozen=True)
class UellmConfig:
    predictor: str | OutputLengthPredictor = "oracle"
    group_size: int = 10
    padding_limit: float = 15000.0
    default_deadline_s: float = 10.0


class UellmScheduler(SchedulerBase):
    policy_name = "uellm"
    CONFIGS = {"config": UellmConfig}

    def __init__(self, planner: MemoryPlanner, max_model_len: int, max_num_seqs: int,
                 config: UellmConfig = UellmConfig(), prefill: PrefillConfig = PrefillConfig()):
        super().__init__(planner, max_model_len, max_num_seqs, prefill)
        p = config.predictor
        self.predictor = make_predictor(p) if isinstance(p, str) else p
        self.group_size = min(config.group_size, max_num_seqs)
        self.padding_limit = config.padding_limit
        self.default_deadline_s = config.default_deadline_s
        self._heap: list = []
        self._count = 0
        self._pred: dict[str, int] = {}
        self._tie = itertools.count()

    def _key(self, req: Request) -> float:
        d = req.effective_deadline()
        if d is None:
            d = req.arrival_time + self.default_deadline_s
        return d + 0.5 * self._pred[req.request_id]

    def _enqueue(self, req: Request, requeue: bool) -> None:
        if req.request_id not in self._pred:
            self._pred[req.request_id] = self.predictor.predict(req)
        heapq.heappush(self._heap, (self._key(req), next(self._tie), req))
        self._count += 1

    def _dequeue(self, req: Request) -> None:
        self._count -= 1  # its heap entry is skipped when it surfaces
        self._pred.pop(req.request_id, None)

    def _num_waiting(self) -> int:
        return self._count

    def _pop_waiting(self) -> tuple[float, int, Request] | None:
        h = self._heap
        while h and h[0][2].state is not RequestState.WAITING:
            heapq.heappop(h)
        return heapq.heappop(h) if h else None

    def _admit(self, now: float, budget: int, out: SchedulerOutput) -> None:
        if self.running or self._count == 0:
            return
        group: list[Request] = []
        cur_max = 0
        shape = BatchShape()
        while len(group) < self.group_size:
            item = self._pop_waiting()
            if item is None:
                break
            q = item[2]
            q_out = self._pred[q.request_id]
            joins = not group or q_out <= cur_max or (
                (q_out - cur_max) * (len(group) + 1) * 1.2 <= self.padding_limit
            )
            nxt = self._plus(shape, q)
            if not joins or not self.planner.fits(nxt, budget):
                heapq.heappush(self._heap, item)
                break
            group.append(q)
            shape = nxt
            cur_max = max(cur_max, q_out)
        for q in group:
            self._count -= 1
            self._start(q, out)

    def _on_finished(self, req: Request) -> None:
        self._pred.pop(req.request_id, None)
        self.predictor.observe(req, req.num_generated)

    def _on_leave_running(self, req: Request) -> None:
        self._pred.pop(req.request_id, None)  # re-predicted if it is requeued
