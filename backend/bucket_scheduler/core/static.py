"""`static`: Triton's dynamic batcher as a user would configure it.

When nothing runs, wait until `max_batch_size` requests are queued or the
oldest has waited `max_queue_delay_s`, then take up to max_batch_size in
arrival order, padded to the longest, and run them to completion: nothing
joins until the whole batch has left.  Defaults: max_batch_size 8 and a
100 ms queue delay (Triton's default delay is 0, which degenerates to batches
of one at low load; 100 ms is the usual hand-set value).  Unlike Triton's
batcher it also stops at the first request whose worst case does not fit the
memory budget, so no policy is allowed to run out of memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import SchedulerBase
from .fifo import FifoQueue, FifoWaiting
from .interface import SchedulerOutput
from .memory import BatchShape, MemoryPlanner
from .prefill import PrefillConfig


@dataclass(frozen=True)
class StaticConfig:
    max_batch_size: int = 8
    max_queue_delay_s: float = 0.1

    def __post_init__(self):
        if self.max_batch_size < 1 or self.max_queue_delay_s < 0:
            raise ValueError("max_batch_size must be >= 1 and max_queue_delay_s >= 0")


class StaticScheduler(FifoWaiting, SchedulerBase):
    policy_name = "static"
    CONFIGS = {"config": StaticConfig}

    def __init__(self, planner: MemoryPlanner, max_model_len: int, max_num_seqs: int,
                 config: StaticConfig = StaticConfig(), prefill: PrefillConfig = PrefillConfig()):
        super().__init__(planner, max_model_len, max_num_seqs, prefill)
        self.batch_size = min(config.max_batch_size, max_num_seqs)
        self.max_queue_delay_s = config.max_queue_delay_s
        self.queue = FifoQueue()

    def _admit(self, now: float, budget: int, out: SchedulerOutput) -> None:
        if self.running or not len(self.queue):
            return
        oldest = self.queue.peek()
        if len(self.queue) < self.batch_size and now < oldest.arrival_time + self.max_queue_delay_s:
            return
        shape = BatchShape()
        while len(self.running) < self.batch_size and len(self.queue):
            req = self.queue.peek()
            nxt = self._plus(shape, req)
            if not self.planner.fits(nxt, budget):
                break
            self.queue.pop()
            shape = nxt
            self._start(req, out)

    def next_wakeup(self, now: float) -> float | None:
        """When a waiting batch becomes due although nothing arrives (for event-driven drivers)."""
        if self.running or not len(self.queue):
            return None
        return self.queue.peek().arrival_time + self.max_queue_delay_s
