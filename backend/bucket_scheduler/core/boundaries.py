"""How bucket boundaries move: one small interface, one class per mode.

A mode sees every newly queued length (`observe`) and, once per step, may split, merge or
replace the buckets of a BucketManager (`rebalance`) through its public methods.

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
- "fixed": boundaries given by the caller; nothing moves.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

if TYPE_CHECKING:
    from .buckets import Bucket, BucketManager

NMaxOf = Callable[[int], int]  # memory-safe batch size for a bucket, given its upper bound
MODES = ("median", "algorithm1", "dp", "fixed")


@dataclass(frozen=True)
class BoundaryConfig:
    """The bucket layout's options (scheduler options of the same names)."""

    bucket_mode: str = "dp"  # the core's default; the engine runs "median" (runtime/api.py)
    max_buckets: int = 32
    boundaries: list[int] | None = None  # initial (or, with "fixed", permanent) inner boundaries
    split_threshold: float = 0.5
    merge_ratio: float = 0.5
    min_bucket_width: int = 16
    dp_refresh: int = 200
    dp_window: int = 4000
    dp_hysteresis: float = 0.05
    dp_min_observations: int = 32

    def __post_init__(self):
        if self.bucket_mode not in MODES:
            raise ValueError(f"bucket mode must be one of {MODES}, got {self.bucket_mode!r}")
        if self.max_buckets < 1:
            raise ValueError("max_buckets must be >= 1")
        if self.bucket_mode == "fixed" and self.boundaries is None:
            raise ValueError("bucket mode 'fixed' needs boundaries")


class BoundaryMode(Protocol):
    def observe(self, length: int) -> None:
        """A newly queued request's (clamped) prompt length."""

    def rebalance(self, mgr: "BucketManager", n_max_of: NMaxOf) -> None:
        """Move the boundaries of `mgr` if this mode wants to; cheap when nothing moves."""


def make_boundary_mode(cfg: BoundaryConfig, max_model_len: int) -> BoundaryMode:
    modes = {"median": MedianMode, "algorithm1": Algorithm1Mode, "dp": DpMode, "fixed": FixedMode}
    return modes[cfg.bucket_mode](cfg, max_model_len)


class FixedMode:
    def __init__(self, cfg: BoundaryConfig, max_model_len: int):
        self.cfg = cfg

    def observe(self, length: int) -> None:
        pass

    def rebalance(self, mgr: "BucketManager", n_max_of: NMaxOf) -> None:
        pass


class _SplitMerge(FixedMode):
    """Cut buckets holding at least min_count(N_max) requests where cut() says (when total
    waiting > N_max), then merge the neighbour pair holding fewest when should_merge()."""

    def rebalance(self, mgr: "BucketManager", n_max_of: NMaxOf) -> None:
        total = mgr.count
        i = 0
        while i < len(mgr.buckets) and len(mgr.buckets) < self.cfg.max_buckets:
            b = mgr.buckets[i]
            n_max = max(1, n_max_of(b.up))
            at = self.cut(mgr, b) if total > n_max and b.count >= self.min_count(n_max) else None
            if at is not None:
                mgr.split(i, at)
                continue  # look at the lower half again: it may need another cut
            i += 1
        if len(mgr.buckets) < 2:
            return
        bs = mgr.buckets
        union, i = min((a.count + b.count, i) for i, (a, b) in enumerate(zip(bs, bs[1:])))
        n_max = max(1, n_max_of(bs[i + 1].up))
        if self.should_merge(mgr, union, n_max):
            mgr.merge(i)


class MedianMode(_SplitMerge):
    def min_count(self, n_max: int) -> int:
        return 2 * n_max

    def should_merge(self, mgr: "BucketManager", union: int, n_max: int) -> bool:
        return union < n_max

    def cut(self, mgr: "BucketManager", b: "Bucket") -> int | None:
        """Just above the median waiting length, moved (if needed) so that both halves keep a
        request and are at least min_bucket_width wide; None when the lengths span less than
        2 * min_bucket_width.  Such a cut always exists otherwise: with a, z the shortest and
        longest waiting lengths, z - a >= 2w gives max(a + 1, low + w) <= min(z, up - w)."""
        lengths = mgr.lengths
        below = lengths.prefix(b.low)
        n = lengths.prefix(b.up) - below
        w = self.cfg.min_bucket_width
        if n < 2:
            return None
        a, z = lengths.kth(below + 1), lengths.kth(below + n)
        if z - a < 2 * w:
            return None
        median = lengths.kth(below + (n + 1) // 2)
        return min(max(median + 1, a + 1, b.low + w), z, b.up - w)


class Algorithm1Mode(_SplitMerge):
    def min_count(self, n_max: int) -> int:
        return n_max + 1

    def should_merge(self, mgr: "BucketManager", union: int, n_max: int) -> bool:
        return mgr.count < self.cfg.merge_ratio * n_max and union <= n_max

    def cut(self, mgr: "BucketManager", b: "Bucket") -> int | None:
        """The midpoint, when more than split_threshold of the bucket lies below it."""
        wide = b.up - b.low >= 2 * self.cfg.min_bucket_width
        if wide and mgr.lengths.range(b.low, b.mid) > self.cfg.split_threshold * b.count:
            return b.mid
        return None


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


class LengthHistogram:
    """The last `window` observed lengths, binned on histogram_edges: a count and a summed
    length per bin, what optimal_boundaries cuts and padding() scores. The dp mode and the
    cluster's replica ranges both keep one."""

    def __init__(self, max_len: int, window: int):
        self.edges = histogram_edges(max_len)
        self._obs: deque[int] = deque(maxlen=window)
        self._count = [0] * (len(self.edges) - 1)
        self._sum = [0] * (len(self.edges) - 1)

    def __len__(self) -> int:
        return len(self._obs)

    def mean(self) -> float:
        return sum(self._obs) / len(self._obs) if self._obs else 0.0

    def observe(self, length: int) -> None:
        if len(self._obs) == self._obs.maxlen:
            old = self._obs[0]
            ob = bisect.bisect_right(self.edges, old) - 1
            self._count[ob] -= 1
            self._sum[ob] -= old
        self._obs.append(length)
        i = bisect.bisect_right(self.edges, length) - 1
        self._count[i] += 1
        self._sum[i] += length

    def bins(self, max_bins: int | None = None) -> tuple[list[int], list[int], list[int]]:
        """Non-empty bins (top edge, count, summed lengths); with max_bins, neighbours
        are merged pairwise until at most that many remain (bounds the dp's cost)."""
        tops, counts, sums = [], [], []
        for i, n in enumerate(self._count):
            if n:
                tops.append(self.edges[i + 1])
                counts.append(n)
                sums.append(self._sum[i])
        while max_bins is not None and len(tops) > max_bins:
            tops = tops[1::2] + ([tops[-1]] if len(tops) % 2 else [])
            counts = [sum(counts[i : i + 2]) for i in range(0, len(counts), 2)]
            sums = [sum(sums[i : i + 2]) for i in range(0, len(sums), 2)]
        return tops, counts, sums

    def padding(self, bounds: list[int]) -> float:
        """Padding of the observed lengths under the given inner boundaries."""
        total = 0.0
        group_top, group_c, group_s = None, 0, 0
        gi = 0
        for t, c, s in zip(*self.bins()):
            while gi < len(bounds) and t > bounds[gi]:  # bin lies above this boundary: close group
                if group_c:
                    total += group_c * group_top - group_s
                group_c = group_s = 0
                gi += 1
            group_top, group_c, group_s = t, group_c + c, group_s + s
        if group_c:
            total += group_c * group_top - group_s
        return total


class DpMode:
    """Padding-optimal boundaries for the histogram of recently observed lengths."""

    def __init__(self, cfg: BoundaryConfig, max_model_len: int):
        self.cfg = cfg
        self.max_bins = max(2 * cfg.max_buckets, 192)
        self.hist = LengthHistogram(max_model_len, cfg.dp_window)
        self._since_refresh = 0
        self._placed = False

    def observe(self, length: int) -> None:
        self.hist.observe(length)
        self._since_refresh += 1

    def groups(self, mgr: "BucketManager", n_max_of: NMaxOf) -> int:
        """Buckets worth keeping: each should hold about a batch (N_max at the median waiting length)."""
        if mgr.count == 0:
            return 1
        n_max = max(1, n_max_of(mgr.lengths.kth((mgr.count + 1) // 2) + 1))  # at the median waiting length
        return max(1, min(self.cfg.max_buckets, mgr.count // n_max))

    def rebalance(self, mgr: "BucketManager", n_max_of: NMaxOf) -> None:
        k = self.groups(mgr, n_max_of)
        too_many = len(mgr.buckets) > k
        due = self._since_refresh >= (self.cfg.dp_refresh if self._placed else self.cfg.dp_min_observations)
        if not (due or too_many):
            return
        if due:
            self._since_refresh = 0
        bounds, pad = optimal_boundaries(*self.hist.bins(max_bins=self.max_bins), k)
        if self._placed and not too_many:
            if pad >= self.hist.padding(mgr.boundaries()) * (1.0 - self.cfg.dp_hysteresis):
                return
        self._placed = True
        mgr.set_boundaries(bounds)
