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

How boundaries move is the boundary mode's job (boundaries.py: median, algorithm1, dp,
fixed), behind one small interface.

The number of buckets never exceeds max_buckets.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from typing import Iterable, Iterator

from .boundaries import BoundaryConfig, NMaxOf, make_boundary_mode
from .interface import BucketInfo
from .policy import OrderPolicy
from .request import Request


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
        """(0, key) of the best online request, else (1, key) of the best offline one."""
        for rank, heap in enumerate((self._online, self._offline)):
            if self._top(heap) is not None:
                return (rank, heap[0][0])
        return None

    def oldest(self) -> _Entry | None:
        return self._top(self._oldest)

    def push(self, entry: _Entry, key: float, seq: int, heapify_later: bool = False) -> None:
        """Hold `entry` (ranked by `key`, ties by `seq`); with heapify_later, call heapify()
        once after the last push (O(n) for a batch of pushes)."""
        entry.bucket = self
        push = list.append if heapify_later else heapq.heappush
        push(self._online if entry.req.is_online else self._offline, (key, seq, entry))
        push(self._oldest, (entry.req.arrival_time, seq, entry))
        self.count += 1

    def heapify(self) -> None:
        for heap in (self._online, self._offline, self._oldest):
            heapq.heapify(heap)

    def info(self, n_max: int) -> BucketInfo:
        """This bucket for metrics (rebuilt only when depth or N_max changed)."""
        info = self._info
        if info is None or info.depth != self.count or info.n_max != n_max:
            info = self._info = BucketInfo(self.low, self.up, self.count, n_max)
        return info

    def live_entries(self) -> Iterator[_Entry]:
        for heap in (self._online, self._offline):
            for item in heap:
                if item[-1].alive and item[-1].bucket is self:
                    yield item[-1]

    def compact(self) -> None:
        """Drop dead entries once they outnumber live ones (keeps heaps O(live))."""
        if max(len(self._online) + len(self._offline), len(self._oldest)) > 2 * self.count + 64:
            self._online, self._offline, self._oldest = (
                [x for x in heap if x[-1].alive] for heap in (self._online, self._offline, self._oldest))
            self.heapify()


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


class BucketManager:
    """Holds the waiting requests in length buckets and moves the boundaries."""

    def __init__(self, max_model_len: int, config: BoundaryConfig | None = None, order: OrderPolicy | None = None):
        self.config = config = config or BoundaryConfig()
        self.max_model_len = max_model_len
        self.order = order or OrderPolicy()
        self.mode = make_boundary_mode(config, max_model_len)
        self._seq = itertools.count()
        self._entries: dict[str, _Entry] = {}
        self.lengths = _Fenwick(max_model_len)  # waiting lengths, for the modes' cuts
        self.count = 0
        self.buckets: list[Bucket] = [Bucket(0, max_model_len)]
        self._lows = [0]
        self.splits = 0
        self.merges = 0
        self.replacements = 0
        if config.boundaries is not None:
            self.set_boundaries(config.boundaries)

    # --- membership ----------------------------------------------------------

    def __len__(self) -> int:
        return self.count

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._entries

    def bucket_for(self, length: int) -> Bucket:
        return self.buckets[bisect.bisect_right(self._lows, length) - 1]

    def _push(self, entry: _Entry, heapify_later: bool = False) -> None:
        req = entry.req
        key = self.order.online_key(req) if req.is_online else self.order.offline_key(req)
        self.bucket_for(self._clamp(req.seq_len)).push(entry, key, next(self._seq), heapify_later)

    def _refill(self, entries: list[_Entry], targets: list[Bucket]) -> None:
        """Put live entries into freshly made buckets: append, then heapify (O(n))."""
        for e in entries:
            self._push(e, heapify_later=True)
        for b in targets:
            b.heapify()

    def add(self, req: Request, observe: bool = True) -> Bucket:
        length = self._clamp(req.seq_len)
        entry = _Entry(req, None)
        self._entries[req.request_id] = entry
        self._push(entry)
        self.lengths.add(length, 1)
        self.count += 1
        if observe:
            self.mode.observe(self._clamp(req.prompt_len))
        return entry.bucket

    def remove(self, req: Request) -> bool:
        entry = self._entries.pop(req.request_id, None)
        if entry is None:
            return False
        entry.alive = False
        entry.bucket.count -= 1
        entry.bucket.compact()
        self.lengths.add(self._clamp(req.seq_len), -1)
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

    def infos(self, n_max_of: NMaxOf) -> list[BucketInfo]:
        return [b.info(n_max_of(b.up)) for b in self.buckets]

    # --- boundaries ----------------------------------------------------------

    def boundaries(self) -> list[int]:
        """Inner boundaries (exclusive upper edges of all buckets but the last)."""
        return [b.up for b in self.buckets[:-1]]

    def set_boundaries(self, bounds: Iterable[int]) -> None:
        """Replace all buckets; waiting requests are redistributed."""
        inner = sorted({int(x) for x in bounds if 0 < int(x) < self.max_model_len})
        inner = inner[: self.config.max_buckets - 1]
        if inner == self.boundaries():
            return
        edges = [0, *inner, self.max_model_len]
        kept = {(b.low, b.up): b for b in self.buckets}
        new = [kept.pop((lo, hi), None) or Bucket(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]
        # only requests of buckets whose range changed move (unchanged buckets keep their heaps)
        moved = [e for b in kept.values() for e in b.live_entries()]
        self._install(new)
        for e in moved:
            self._push(e)
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

    def rebalance(self, n_max_of: NMaxOf) -> None:
        """Move boundaries per the mode.  Cheap when nothing needs to move."""
        self.mode.rebalance(self, n_max_of)
