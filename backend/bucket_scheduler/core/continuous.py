"""`continuous`: vLLM/Orca-style iteration-level batching, first come first served.

Every step admits waiting requests in arrival order (no length grouping, no
priority) while running < max_num_seqs and the planner's worst case fits the budget,
stopping at the first that does not fit.  The prompt tokens computed per step are capped by
the token budget every policy shares (`max_num_batched_tokens`, vLLM's name; core/prefill.py),
in the same arrival order, optionally in chunks.  When the memory budget shrinks, the most
recently admitted requests are preempted and recomputed later (vLLM's recompute).
"""

from __future__ import annotations

from .base import SchedulerBase
from .fifo import FifoQueue, FifoWaiting
from .interface import SchedulerOutput
from .memory import MemoryPlanner
from .prefill import PrefillConfig


class ContinuousScheduler(FifoWaiting, SchedulerBase):
    policy_name = "continuous"

    def __init__(self, planner: MemoryPlanner, max_model_len: int, max_num_seqs: int,
                 prefill: PrefillConfig = PrefillConfig()):
        super().__init__(planner, max_model_len, max_num_seqs, prefill)
        self.queue = FifoQueue()

    def _admit(self, now: float, budget: int, out: SchedulerOutput) -> None:
        shape = self.running_shape()
        while len(self.running) < self.max_num_seqs and len(self.queue):
            req = self.queue.peek()
            nxt = self._plus(shape, req)
            if not self.planner.fits(nxt, budget):
                break
            self.queue.pop()
            shape = nxt
            self._start(req, out)
