"""`continuous`: vLLM/Orca-style iteration-level batching, first come first served.

Every step admits waiting requests in arrival order (no length grouping, no
priority) while all of these hold, stopping at the first that does not fit:
running < max_num_seqs; prompt tokens prefilled this step + running sequences
<= max_num_batched_tokens (vLLM's token budget, default max(max_model_len, 2048));
the planner's worst case fits the budget.  When the budget shrinks, the most
recently admitted requests are preempted and recomputed later (vLLM's recompute).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import SchedulerBase
from .fifo import FifoQueue, FifoWaiting
from .interface import SchedulerOutput
from .memory import MemoryPlanner


@dataclass(frozen=True)
class ContinuousConfig:
    max_num_batched_tokens: int | None = None  # None: max(max_model_len, 2048)


class ContinuousScheduler(FifoWaiting, SchedulerBase):
    policy_name = "continuous"
    CONFIGS = {"config": ContinuousConfig}

    def __init__(self, planner: MemoryPlanner, max_model_len: int, max_num_seqs: int,
                 config: ContinuousConfig = ContinuousConfig()):
        super().__init__(planner, max_model_len, max_num_seqs)
        self.max_num_batched_tokens = config.max_num_batched_tokens or max(max_model_len, 2048)
        self.queue = FifoQueue()

    def _admit(self, now: float, budget: int, out: SchedulerOutput) -> None:
        shape = self.running_shape()
        tokens = len(self.running)
        while len(self.running) < self.max_num_seqs and len(self.queue):
            req = self.queue.peek()
            need = req.seq_len
            if self.running and tokens + need > self.max_num_batched_tokens:
                break
            nxt = shape.plus(self.planner.worst_tokens(req))
            if not self.planner.fits(nxt, budget):
                break
            self.queue.pop()
            shape, tokens = nxt, tokens + need
            self._start(req, out)
