"""Length buckets of waiting requests, and how their boundaries move.

Buckets are half-open ranges [low, up) that together cover [0, max_model_len).
A waiting request sits in exactly one bucket, the one holding its length
(`Request.seq_len`: the prompt, plus tokens already generated for a preempted
request that will be recomputed).

Inside a bucket, two heaps order the requests (online by deadline, offline by
job size with aging; see policy.py) and a third finds the longest-waiting one,
so picking, refilling and starvation checks cost O(log n) and choosing the
next bucket costs O(buckets).  Removal is lazy (an entry is marked dead and
skipped when it reaches a heap top).

Boundary modes (BucketManager(mode=...)):
- "median" (the engine's default): splits that always make progress, into buckets
  that each hold a batch.  A bucket holding at least 2 * N_max requests is cut
  at the median of its waiting lengths, so both halves keep about N_max or more,
  whatever the skew (the paper's midpoint rule leaves e.g. 100 requests in
  [1100, 2000) in one bucket [0, 2048)).  Buckets whose lengths span less than
  2 * min_bucket_width are not cut (their padding is already small).  The two
  neighbours with the fewest requests merge, one pair per call, when together
  they hold less than N_max (a split leaves at least 2 * N_max: no flapping).
- "algorithm1": the paper's Algorithm 1.  Start with one bucket [0, L).  Split a
  bucket at its midpoint m when total waiting > N_max, the bucket holds more
  than N_max requests and more than `split_threshold` (0.5) of them lie below m.
  Merge two neighbours when total waiting falls under `merge_ratio * N_max`
  (hysteresis: merge_ratio < 1 leaves a band where nothing moves) and their
  union still holds at most N_max.
- "dp": place K boundaries where expected padding is least for the
  histogram of recently observed lengths (the paper's Eq. 4 solved exactly by
  dynamic programming over histogram bins instead of bisection).  K is at most
  max_buckets and at most (waiting requests // N_max at the median waiting
  length), so that buckets hold batches worth running: 24 waiting requests
  with N_max = 8 make at most 3 buckets, not 21.  Recomputed every
  `dp_refresh` observations, and at once when the queue shrank below what the
  current buckets need; new boundaries replace the old only when they cut
  expected padding by more than `dp_hysteresis` (relative), or when there are
  too many buckets.
- "fixed": boundaries given by the caller.

The number of buckets never exceeds max_buckets.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import deque
from typing import Callable, Iterable, Iterator

import numpy as np

from .interface import BucketInfo
from .policy import OrderPolicy
from .request import Request

MODES = ("median", "algorithm1", "dp", "fixed")


class _Entry:
    __slots__ = ("req", "alive", "bucket")

    def __init__(self, req: Request, bucket: "Bucket"):
        self.req = req
        self.alive = True
        self.bucket = bucket


class Bucket:
    """One length range and the waiting requests in it."""

    __slots__ = ("low", "up", "count", "_online", "_offline", "_oldest", "_info")

    def __init__(self, low: int, up: int):
        self.low = low
        self.up = up
        self.count = 0
        self._info: BucketInfo | None = None
        self._online: list = []
        self._offline: list = []
        self._oldest: list = []

    def __repr__(self) -> str:
        return f"Bucket([{self.low}, {self.up}), depth={self.count})"

    @property
    def mid(self) -> int:
        return (self.low + self.up) // 2

    def holds(self, length: int) -> bool:
        return self.low <= length < self.up

    @staticmethod
    def _top(heap: list) -> _Entry | None:
        while heap and not heap[0][-1].alive:
            heapq.heappop(heap)
        return heap[0][-1] if heap else None

    def head(self) -> _Entry | None:
        """Best waiting request: online heap first, then offline."""
        return self._top(self._online) or self._top(self._offline)

    def head_online(self) -> _Entry | None:
        return self._top(self._online)

    def head_key(self) -> tuple[int, float] | None:
        e = self._top(self._online)
        if e is not None:
            return (0, self._online[0][0])
        e = self._top(self._offline)
        if e is not None:
            return (1, self._offline[0][0])
        return None

    def oldest(self) -> _Entry | None:
        return self._top(self._oldest)

    def live_entries(self) -> Iterator[_Entry]:
        for heap in (self._online, self._offline):
            for item in heap:
                if item[-1].alive and item[-1].bucket is self:
                    yield item[-1]

    def compact(self) -> None:
        """Drop dead entries once they outnumber live ones (keeps heaps O(live))."""
        total = len(self._online) + len(self._offline)
        if total > 2 * self.count + 64:
            self._online = [x for x in self._online if x[-1].alive]
            self._offline = [x for x in self._offline if x[-1].alive]
            heapq.heapify(self._online)
            heapq.heapify(self._offline)
        if len(self._oldest) > 2 * self.count + 64:
            self._oldest = [x for x in self._oldest if x[-1].alive]
            heapq.heapify(self._oldest)


class _Fenwick:
    """Counts of waiting lengths, for 'how many below the midpoint' in O(log L)."""

    def __init__(self, size: int):
        self.n = size
        self.tree = [0] * (size + 1)

    def add(self, i: int, delta: int) -> None:
        i += 1
        n, tree = self.n, self.tree
        while i <= n:
            tree[i] += delta
            i += i & -i

    def prefix(self, i: int) -> int:
        """Count of lengths < i."""
        s = 0
        tree = self.tree
        i = min(i, self.n)
        while i > 0:
            s += tree[i]
            i -= i & -i
        return s

    def range(self, lo: int, hi: int) -> int:
        return self.prefix(hi) - self.prefix(lo)

    def kth(self, k: int) -> int:
        """The k-th smallest length (k >= 1, at most the total count)."""
        pos, tree = 0, self.tree
        step = 1 << self.n.bit_length()
        while step:
            nxt = pos + step
            if nxt <= self.n and tree[nxt] < k:
                pos = nxt
                k -= tree[nxt]
            step >>= 1
        return pos


def histogram_edges(max_len: int, min_width: int = 8, rel_width: float = 0.02) -> list[int]:
    """Bin edges 0 = e0 < e1 < ... < en = max_len: `min_width` tokens wide for short
    lengths, then about `rel_width` of the length (padding is relative, so bins are too)."""
    edges = [0]
    e = 0
    while e < max_len:
        e = min(max_len, e + max(min_width, int(e * rel_width)))
        edges.append(e)
    return edges


def optimal_boundaries(
    tops: list[int], counts: list[float], sums: list[float], k: int
) -> tuple[list[int], float]:
    """Split consecutive non-empty bins into at most k groups minimising padding.

    tops[i]: exclusive upper edge of bin i (ascending); counts/sums: requests and
    summed lengths in it.  The padding of a group is sum over its requests of
    (group top - length).  Returns (the exclusive upper edges of all groups but
    the last, total padding).  O(k * B^2) with numpy, B = len(tops).
    """

    b = len(tops)
    if b == 0:
        return [], 0.0
    k = max(1, min(k, b))
    t = np.asarray(tops, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(np.asarray(counts, dtype=np.float64))])
    s = np.concatenate([[0.0], np.cumsum(np.asarray(sums, dtype=np.float64))])
    i_idx = np.arange(b)[:, None]
    j_idx = np.arange(b)[None, :]
    # cost[i, j]: padding of one group made of bins i..j
    cost = (c[1:][None, :] - c[:-1][:, None]) * t[None, :] - (s[1:][None, :] - s[:-1][:, None])
    cost = np.where(i_idx <= j_idx, cost, np.inf)
    dp = cost[0].copy()  # one group covering bins 0..j
    choice = []
    for _ in range(1, k):
        # new group starts at bin i (1..j); previous groups cover 0..i-1
        cand = dp[:-1][:, None] + cost[1:, :]
        arg = np.argmin(cand, axis=0)
        best = cand[arg, np.arange(b)]
        nxt = np.minimum(dp, best)  # "at most k": keep fewer groups where better
        arg = np.where(best < dp, arg + 1, -1)
        choice.append(arg)
        dp = nxt
    # backtrack from the last bin
    bounds = []
    j = b - 1
    for arg in reversed(choice):
        i = int(arg[j])
        if i > 0:
            bounds.append(tops[i - 1])
            j = i - 1
    bounds.reverse()
    return bounds, float(dp[b - 1])


class BucketManager:
    """Holds the waiting requests in length buckets and moves the boundaries."""

    def __init__(
        self,
        max_model_len: int,
        order: OrderPolicy | None = None,
        mode: str = "dp",
        max_buckets: int = 32,
        boundaries: Iterable[int] | None = None,
        split_threshold: float = 0.5,
        merge_ratio: float = 0.5,
        min_bucket_width: int = 16,
        dp_refresh: int = 200,
        dp_window: int = 4000,
        dp_min_observations: int = 32,
        dp_hysteresis: float = 0.05,
    ):
        if mode not in MODES:
            raise ValueError(f"bucket mode must be one of {MODES}, got {mode!r}")
        if max_buckets < 1:
            raise ValueError("max_buckets must be >= 1")
        self.max_model_len = max_model_len
        self.order = order or OrderPolicy()
        self.mode = mode
        self.max_buckets = max_buckets
        self.split_threshold = split_threshold
        self.merge_ratio = merge_ratio
        self.min_bucket_width = min_bucket_width
        self.dp_refresh = dp_refresh
        self.dp_min_observations = dp_min_observations
        self.dp_hysteresis = dp_hysteresis
        self.dp_max_bins = max(2 * max_buckets, 192)
        self._seq = itertools.count()
        self._entries: dict[str, _Entry] = {}
        self._lengths = _Fenwick(max_model_len)
        self.count = 0
        self.buckets: list[Bucket] = [Bucket(0, max_model_len)]
        self._lows = [0]
        self.splits = 0
        self.merges = 0
        self.replacements = 0
        # observed-length histogram for the dp mode
        self._edges = histogram_edges(max_model_len)
        self._obs: deque[int] = deque(maxlen=dp_window)
        self._hist_count = [0] * (len(self._edges) - 1)
        self._hist_sum = [0] * (len(self._edges) - 1)
        self._since_refresh = 0
        self._placed = False
        if boundaries is not None:
            self.set_boundaries(boundaries)
        elif mode == "fixed":
            raise ValueError("bucket mode 'fixed' needs boundaries")

    # --- membership ----------------------------------------------------------

    def __len__(self) -> int:
        return self.count

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._entries

    def bucket_for(self, length: int) -> Bucket:
        return self.buckets[bisect.bisect_right(self._lows, length) - 1]

    def _push(self, entry: _Entry, bucket: Bucket, heapify_later: bool = False) -> None:
        req = entry.req
        entry.bucket = bucket
        seq = next(self._seq)
        push = list.append if heapify_later else heapq.heappush
        if req.is_online:
            push(bucket._online, (self.order.online_key(req), seq, entry))
        else:
            push(bucket._offline, (self.order.offline_key(req), seq, entry))
        push(bucket._oldest, (req.arrival_time, seq, entry))
        bucket.count += 1

    def _refill(self, entries: list[_Entry], targets: list[Bucket]) -> None:
        """Put live entries into freshly made buckets: append, then heapify (O(n))."""
        for e in entries:
            self._push(e, self.bucket_for(self._clamp(e.req.seq_len)), heapify_later=True)
        for b in targets:
            heapq.heapify(b._online)
            heapq.heapify(b._offline)
            heapq.heapify(b._oldest)

    def add(self, req: Request, observe: bool = True) -> Bucket:
        length = self._clamp(req.seq_len)
        bucket = self.bucket_for(length)
        entry = _Entry(req, bucket)
        self._entries[req.request_id] = entry
        self._push(entry, bucket)
        self._lengths.add(length, 1)
        self.count += 1
        if observe:
            self._observe(req.prompt_len)
        return bucket

    def remove(self, req: Request) -> bool:
        entry = self._entries.pop(req.request_id, None)
        if entry is None:
            return False
        entry.alive = False
        entry.bucket.count -= 1
        entry.bucket.compact()
        self._lengths.add(self._clamp(req.seq_len), -1)
        self.count -= 1
        return True

    def _clamp(self, length: int) -> int:
        return min(max(0, length), self.max_model_len - 1)

    def pop_head(self, bucket: Bucket) -> Request | None:
        entry = bucket.head()
        if entry is None:
            return None
        self.remove(entry.req)
        return entry.req

    def requests(self) -> Iterator[Request]:
        for entry in self._entries.values():
            yield entry.req

    # --- choosing ------------------------------------------------------------

    def select(self) -> Bucket | None:
        """Bucket whose best request ranks first (online by deadline, then offline by key)."""
        best, best_key = None, None
        for b in self.buckets:
            if b.count == 0:
                continue
            k = b.head_key()
            if k is not None and (best_key is None or k < best_key):
                best, best_key = b, k
        return best

    def oldest(self, exclude: Bucket | None = None) -> tuple[float, Bucket] | None:
        """(arrival time, bucket) of the longest-waiting request outside `exclude`."""
        oldest = None
        for b in self.buckets:
            if b is exclude or b.count == 0:
                continue
            e = b.oldest()
            if e is not None and (oldest is None or e.req.arrival_time < oldest[0]):
                oldest = (e.req.arrival_time, b)
        return oldest

    def oldest_arrival(self, exclude: Bucket | None = None) -> float | None:
        o = self.oldest(exclude)
        return None if o is None else o[0]

    def has_online(self, exclude: Bucket | None = None) -> bool:
        for b in self.buckets:
            if b is not exclude and b.count and b.head_online() is not None:
                return True
        return False

    def infos(self, n_max_of: Callable[[Bucket], int]) -> list[BucketInfo]:
        out = []
        for b in self.buckets:
            info, n_max = b._info, n_max_of(b)
            if info is None or info.depth != b.count or info.n_max != n_max:
                info = b._info = BucketInfo(b.low, b.up, b.count, n_max)  # rebuilt only when it changed
            out.append(info)
        return out

    # --- boundaries ----------------------------------------------------------

    def boundaries(self) -> list[int]:
        """Inner boundaries (exclusive upper edges of all buckets but the last)."""
        return [b.up for b in self.buckets[:-1]]

    def set_boundaries(self, bounds: Iterable[int]) -> None:
        """Replace all buckets; waiting requests are redistributed."""
        inner = sorted({int(x) for x in bounds if 0 < int(x) < self.max_model_len})
        inner = inner[: self.max_buckets - 1]
        if inner == self.boundaries():
            return
        edges = [0, *inner, self.max_model_len]
        kept = {(b.low, b.up): b for b in self.buckets}
        new = [kept.pop((lo, hi), None) or Bucket(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]
        # only requests of buckets whose range changed move (unchanged buckets keep their heaps)
        moved = [e for b in kept.values() for e in b.live_entries()]
        self._install(new)
        for e in moved:
            self._push(e, self.bucket_for(self._clamp(e.req.seq_len)))
        self.replacements += 1

    def _install(self, buckets: list[Bucket]) -> None:
        self.buckets = buckets
        self._lows = [b.low for b in buckets]

    def split(self, index: int, at: int | None = None) -> None:
        b = self.buckets[index]
        at = b.mid if at is None else at
        if not b.low < at < b.up:
            raise ValueError(f"cannot split [{b.low}, {b.up}) at {at}")
        lo, hi = Bucket(b.low, at), Bucket(at, b.up)
        live = list(b.live_entries())
        self._install(self.buckets[:index] + [lo, hi] + self.buckets[index + 1 :])
        self._refill(live, [lo, hi])
        self.splits += 1

    def merge(self, index: int) -> None:
        """Merge bucket `index` with its right neighbour."""
        a, b = self.buckets[index], self.buckets[index + 1]
        m = Bucket(a.low, b.up)
        live = list(a.live_entries()) + list(b.live_entries())
        self._install(self.buckets[:index] + [m] + self.buckets[index + 2 :])
        self._refill(live, [m])
        self.merges += 1

    def rebalance(self, n_max_of: Callable[[Bucket], int]) -> None:
        """Move boundaries per the mode.  Cheap when nothing needs to move."""
        if self.mode == "median":
            self._split_merge(n_max_of, self._median_cut, lambda n_max: 2 * n_max)
            self._merge_one(n_max_of, lambda union, n_max: union < n_max)
        elif self.mode == "algorithm1":
            self._split_merge(n_max_of, self._midpoint_cut, lambda n_max: n_max + 1)
            self._merge_one(n_max_of, lambda union, n_max: self.count < self.merge_ratio * n_max and union <= n_max)
        elif self.mode == "dp":
            self._dp_refresh(n_max_of)

    def _midpoint_cut(self, b: Bucket) -> int | None:
        """Algorithm 1: the midpoint, when more than split_threshold of the bucket lies below it."""
        if b.up - b.low >= 2 * self.min_bucket_width and self._lengths.range(b.low, b.mid) > self.split_threshold * b.count:
            return b.mid
        return None

    def _median_cut(self, b: Bucket) -> int | None:
        """Just above the median waiting length, moved (if needed) so that both halves keep a
        request and are at least min_bucket_width wide; None when the lengths span less than
        2 * min_bucket_width.  Such a cut always exists otherwise: with a, z the shortest and
        longest waiting lengths, z - a >= 2w gives max(a + 1, low + w) <= min(z, up - w)."""
        below = self._lengths.prefix(b.low)
        n = self._lengths.prefix(b.up) - below
        w = self.min_bucket_width
        if n < 2:
            return None
        a, z = self._lengths.kth(below + 1), self._lengths.kth(below + n)
        if z - a < 2 * w:
            return None
        median = self._lengths.kth(below + (n + 1) // 2)
        return min(max(median + 1, a + 1, b.low + w), z, b.up - w)

    def _split_merge(self, n_max_of: Callable[[Bucket], int], cut: Callable[[Bucket], int | None],
                     min_count: Callable[[int], int]) -> None:
        """Cut buckets holding at least min_count(N_max) requests (and total waiting > N_max)."""
        total = self.count
        i = 0
        while i < len(self.buckets) and len(self.buckets) < self.max_buckets:
            b = self.buckets[i]
            n_max = max(1, n_max_of(b))
            at = cut(b) if total > n_max and b.count >= min_count(n_max) else None
            if at is not None:
                self.split(i, at)
                continue  # look at the lower half again: it may need another cut
            i += 1

    def _merge_one(self, n_max_of: Callable[[Bucket], int], should: Callable[[int, int], bool]) -> None:
        """Merge the neighbours whose union holds fewest requests, when should(union, N_max)."""
        if len(self.buckets) < 2:
            return
        union, i = min((a.count + b.count, i) for i, (a, b) in enumerate(zip(self.buckets, self.buckets[1:])))
        n_max = max(1, n_max_of(Bucket(self.buckets[i].low, self.buckets[i + 1].up)))
        if should(union, n_max):
            self.merge(i)

    # --- dp mode -------------------------------------------------------------

    def _observe(self, length: int) -> None:
        length = self._clamp(length)
        if len(self._obs) == self._obs.maxlen:
            old = self._obs[0]
            ob = bisect.bisect_right(self._edges, old) - 1
            self._hist_count[ob] -= 1
            self._hist_sum[ob] -= old
        self._obs.append(length)
        i = bisect.bisect_right(self._edges, length) - 1
        self._hist_count[i] += 1
        self._hist_sum[i] += length
        self._since_refresh += 1

    def _histogram(self, max_bins: int | None = None) -> tuple[list[int], list[int], list[int]]:
        """Non-empty bins (top edge, count, summed lengths); with max_bins, neighbours
        are merged pairwise until at most that many remain (bounds the dp's cost)."""
        tops, counts, sums = [], [], []
        for i, n in enumerate(self._hist_count):
            if n:
                tops.append(self._edges[i + 1])
                counts.append(n)
                sums.append(self._hist_sum[i])
        while max_bins is not None and len(tops) > max_bins:
            tops = tops[1::2] + ([tops[-1]] if len(tops) % 2 else [])
            counts = [sum(counts[i : i + 2]) for i in range(0, len(counts), 2)]
            sums = [sum(sums[i : i + 2]) for i in range(0, len(sums), 2)]
        return tops, counts, sums

    def expected_padding(self, bounds: list[int]) -> float:
        """Padding of the observed histogram under the given inner boundaries."""
        tops, counts, sums = self._histogram()
        total = 0.0
        group_top, group_c, group_s = None, 0, 0
        gi = 0
        for t, c, s in zip(tops, counts, sums):
            while gi < len(bounds) and t > bounds[gi]:  # bin lies above this boundary: close group
                if group_c:
                    total += group_c * group_top - group_s
                group_c = group_s = 0
                gi += 1
            group_top, group_c, group_s = t, group_c + c, group_s + s
        if group_c:
            total += group_c * group_top - group_s
        return total

    def dp_groups(self, n_max_of: Callable[[Bucket], int]) -> int:
        """Buckets worth keeping: each should hold about a batch (N_max at the median waiting length)."""
        if self.count == 0:
            return 1
        median = self._lengths.kth((self.count + 1) // 2)
        n_max = max(1, n_max_of(Bucket(0, median + 1)))
        return max(1, min(self.max_buckets, self.count // n_max))

    def _dp_refresh(self, n_max_of: Callable[[Bucket], int]) -> None:
        k = self.dp_groups(n_max_of)
        too_many = len(self.buckets) > k
        due = self._since_refresh >= (self.dp_refresh if self._placed else self.dp_min_observations)
        if not (due or too_many):
            return
        if due:
            self._since_refresh = 0
        tops, counts, sums = self._histogram(max_bins=self.dp_max_bins)
        bounds, pad = optimal_boundaries(tops, counts, sums, k)
        if self._placed and not too_many:
            current = self.expected_padding(self.boundaries())
            if pad >= current * (1.0 - self.dp_hysteresis):
                return
        self._placed = True
        self.set_boundaries(bounds)
