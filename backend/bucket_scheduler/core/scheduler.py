"""`bucket`: BucketServe's scheduler.

Each step (iteration-level, see interface.py):
1. budget = memory_fraction * (live free memory + KV we hold); if the running
   batch's planned worst case no longer fits, preempt the most recently
   admitted requests until it does (they wait again, keeping arrival and
   priority) and admit nothing this step.
2. Move bucket boundaries (BucketManager.rebalance, per its mode).
3. If nothing runs, pick the bucket whose best request ranks first (online
   before offline; earliest deadline among online; SJF or LJF with aging among
   offline) and start a batch from it.  While a batch runs, free slots are
   refilled from the same bucket only (continuous refill), best request first,
   up to min(N_max, max_num_seqs), where N_max follows the memory budget.
   Refilling stops (the batch drains, then the next bucket is picked) when
   another bucket holds an online request and this one's best is offline, or
   when a request in another bucket has waited longer than `max_wait_s`; a
   drained batch is then followed by the bucket of the longest-waiting request
   (so no request waits much beyond max_wait_s plus one batch, whatever the
   ranking says).  A joining request must also keep the decode batch's
   padding efficiency (sum of sequence lengths / (batch size x longest)) at or
   above `refill_padding_target`, because in a padded runtime every decode step
   computes batch size x longest sequence slots.
   online_rescue (default on): an online request whose deadline would pass
   before the running batch drains, and that can still make it, joins the
   batch at once, whatever its bucket.
   With refill_scope="any" (not the default) free slots may also go to other
   buckets' best requests when their length passes that same padding test: the
   batch then follows its own growing lengths instead of one bucket.
   With refill_scope="wide" each step's newcomers come from ONE bucket, the one
   ranked first now (the longest-waiting request's when it waited past
   max_wait_s), so a prefill batch has little padding, while the decode batch
   holds rows of any bucket: free slots are refilled every step, with no padding
   test (for a runtime whose decode step costs about the same for 3 rows as for 32).
Admission stops at the first request whose worst case would exceed the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import SchedulerBase
from .boundaries import BoundaryConfig
from .buckets import Bucket, BucketManager
from .interface import SchedulerOutput, StepStats
from .memory import BatchShape, MemoryPlanner
from .policy import OrderPolicy
from .prefill import PrefillConfig
from .request import Request


@dataclass(frozen=True)
class RefillConfig:
    """How a running batch takes new requests (scheduler options of the same names). The
    defaults suit a fully padded runtime; the engine's own are in runtime/api.py."""

    refill_padding_target: float = 0.9
    max_wait_s: float = 5.0
    refill_scope: str = "bucket"  # bucket | any | auto | wide
    online_rescue: bool = True

    def __post_init__(self):
        if self.refill_scope not in ("bucket", "any", "auto", "wide"):
            raise ValueError(f"refill_scope must be 'bucket', 'any', 'auto' or 'wide', got {self.refill_scope!r}")


class BucketScheduler(SchedulerBase):
    policy_name = "bucket"
    CONFIGS = {"layout": BoundaryConfig, "order": OrderPolicy, "refill": RefillConfig}

    def __init__(self, planner: MemoryPlanner, max_model_len: int, max_num_seqs: int,
                 layout: BoundaryConfig = BoundaryConfig(), order: OrderPolicy = OrderPolicy(),
                 refill: RefillConfig = RefillConfig(), prefill: PrefillConfig = PrefillConfig()):
        super().__init__(planner, max_model_len, max_num_seqs, prefill)
        self.order, self.refill = order, refill
        self.buckets = BucketManager(max_model_len, layout, order)
        self._last_now: float | None = None
        self._step_s: float | None = None  # moving average of the time between steps while running
        self._anchor: int | None = None  # a length inside the running batch's bucket
        self._budget = 0
        self._mean_new = 128.0  # running mean of max_new_tokens, for N_max of empty buckets
        self._n_max_key: tuple | None = None
        self._n_max_cache: dict[int, int] = {}

    # --- waiting structure ---------------------------------------------------

    def _enqueue(self, req: Request, requeue: bool) -> None:
        if not requeue:
            self._mean_new += (req.max_new_tokens - self._mean_new) * 0.01
        self.buckets.add(req, observe=not requeue)

    def _dequeue(self, req: Request) -> None:
        self.buckets.remove(req)

    def _num_waiting(self) -> int:
        return self.buckets.count

    def _on_leave_running(self, req: Request) -> None:
        if not self.running:
            self._anchor = None

    # --- decisions -----------------------------------------------------------

    def n_max(self, up: int) -> int:
        """Memory-safe batch size for a bucket below `up`: worst case (up - 1 + typical max new)
        per sequence. Cached per upper bound until the budget or the typical max_new_tokens moves."""
        key = (self._budget, int(self._mean_new))
        if key != self._n_max_key:
            self._n_max_key, self._n_max_cache = key, {}
        n = self._n_max_cache.get(up)
        if n is None:
            tokens = min(self.max_model_len, up - 1 + int(self._mean_new))
            n = self._n_max_cache[up] = self.planner.max_batch_size(tokens, self._budget, cap=self.max_num_seqs)
        return n

    def active_bucket(self) -> Bucket | None:
        return None if self._anchor is None else self.buckets.bucket_for(self._anchor)

    def _should_drain(self, bucket: Bucket, now: float) -> bool:
        head = bucket.head()
        if head is None:
            return True
        if not head.req.is_online and self.buckets.has_online(exclude=bucket):
            return True
        oldest = self.buckets.oldest_arrival(exclude=bucket)
        return oldest is not None and now - oldest > self.refill.max_wait_s

    def _admit(self, now: float, budget: int, out: SchedulerOutput) -> None:
        self._budget = budget
        if self._last_now is not None and self.running and now > self._last_now:
            dt = now - self._last_now
            self._step_s = dt if self._step_s is None else 0.9 * self._step_s + 0.1 * dt
        self._last_now = now
        self.buckets.rebalance(self.n_max)
        if not self.buckets.count:
            return
        refill = bool(self.running)
        if refill and self.refill.refill_scope == "any":
            self._refill_any(now, budget, out)
            return
        bucket = None
        wide = self.refill.refill_scope == "wide"
        if refill and not wide:
            active = self.active_bucket()
            if active is not None and not self._should_drain(active, now):
                bucket = active
        else:
            oldest = self.buckets.oldest()
            if oldest is not None and now - oldest[0] > self.refill.max_wait_s:
                bucket = oldest[1]  # starvation guard beats the ranking
            else:
                bucket = self.buckets.select()
        if bucket is not None:
            self._fill_from(bucket, refill and not wide, budget, out)
        if self.refill.refill_scope == "auto":
            self._fill_shallow(budget, out)
        if self.refill.online_rescue and self.running and self.buckets.count:
            self._rescue_online(now, budget, out)

    def _rescue_online(self, now: float, budget: int, out: SchedulerOutput) -> None:
        """online_rescue: an online request in another bucket whose deadline falls before the
        running batch can drain (its longest remaining output x the recent step time), but not
        before the next step, joins now, earliest deadline first, memory permitting: padding
        is the cheaper miss.  A request already too late gains nothing from the padding and
        waits its bucket's turn (online requests still rank first there, by deadline)."""
        if self._step_s is None:
            return
        remaining = max(r.max_new_tokens - r.num_generated for r in self.running)
        drain_at = now + remaining * self._step_s
        savable_from = now + self._step_s  # a deadline before the next step is lost anyway
        shape = self.running_shape()
        while len(self.running) < self.max_num_seqs:
            best = None
            for b in self.buckets.buckets:
                if not b.count:
                    continue
                e = b.head_online()
                if e is not None:
                    d = self.order.deadline(e.req)
                    if savable_from <= d < drain_at and (best is None or d < best[0]):
                        best = (d, e.req)
            if best is None:
                break
            shape = self._take(best[1], shape, budget, out)
            if shape is None:
                break

    def _take(self, req: Request, shape: BatchShape, budget: int, out: SchedulerOutput) -> BatchShape | None:
        """Admit `req` when the batch with it still fits the budget: the new shape, else None."""
        nxt = self._plus(shape, req)
        if not self.planner.fits(nxt, budget):
            return None
        self.buckets.remove(req)
        self._start(req, out)
        return nxt

    def _fill_from(self, bucket: Bucket, refill: bool, budget: int, out: SchedulerOutput) -> None:
        """Admit the bucket's best requests while slots, memory and (when refilling) padding allow."""
        shape = self.running_shape()
        lens_sum = sum(r.seq_len for r in self.running)
        lens_max = max((r.seq_len for r in self.running), default=0)
        target = self.refill.refill_padding_target
        while len(self.running) < self.max_num_seqs:
            entry = bucket.head()
            if entry is None:
                break
            req, n = entry.req, len(self.running)
            L = req.seq_len
            if refill and target > 0 and (lens_sum + L) < target * (n + 1) * max(lens_max, L):
                break
            shape = self._take(req, shape, budget, out)
            if shape is None:
                break
            lens_sum, lens_max = lens_sum + L, max(lens_max, L)
            if self._anchor is None:
                self._anchor = L if bucket.holds(L) else bucket.low
        if self._anchor is None and self.running:
            self._anchor = bucket.low

    def _fill_shallow(self, budget: int, out: SchedulerOutput) -> None:
        """refill_scope="auto": when every waiting request fits in the free slots, nothing is
        gained by making any of them wait for its bucket's turn: admit them all, best first,
        whatever their length (memory permitting).  A deep queue keeps one bucket per batch."""
        shape = self.running_shape()
        while 0 < self.buckets.count <= self.max_num_seqs - len(self.running):
            req = self.buckets.select().head().req
            shape = self._take(req, shape, budget, out)
            if shape is None:
                break
            if self._anchor is None:
                self._anchor = req.seq_len

    def _refill_any(self, now: float, budget: int, out: SchedulerOutput) -> None:
        """refill_scope="any": free slots go to the best-ranked bucket head, from any bucket,
        whose length keeps the decode batch at or above refill_padding_target."""
        target = self.refill.refill_padding_target
        shape = self.running_shape()
        lens_sum = sum(r.seq_len for r in self.running)
        lens_max = max(r.seq_len for r in self.running)
        while len(self.running) < self.max_num_seqs:
            n1 = len(self.running) + 1
            # admissible lengths: (sum + L) >= target * n1 * max(lens_max, L)
            lo = target * n1 * lens_max - lens_sum
            hi = lens_sum / (target * n1 - 1) if target * n1 > 1 else float("inf")
            best = None
            for b in self.buckets.buckets:
                if b.count == 0 or b.up <= lo or b.low > hi:
                    continue
                e = b.head()
                if e is not None and lo <= e.req.seq_len <= hi:
                    k = b.head_key()
                    if best is None or k < best[0]:
                        best = (k, e.req)
            if best is None:
                break
            req = best[1]
            if not req.is_online and self.buckets.has_online():
                break  # let the batch drain: an online request that cannot join goes next
            oldest = self.buckets.oldest()
            if oldest is not None and now - oldest[0] > self.refill.max_wait_s and oldest[1].oldest().req is not req:
                break  # same for a request that has waited too long
            shape = self._take(req, shape, budget, out)
            if shape is None:
                break
            lens_sum, lens_max = lens_sum + req.seq_len, max(lens_max, req.seq_len)

    def _extra_stats(self, st: StepStats) -> None:
        st.buckets = self.buckets.infos(self.n_max)
        b = self.active_bucket()
        if b is not None and self.running and self.refill.refill_scope not in ("any", "wide"):
            st.bucket_low, st.bucket_up = b.low, b.up
