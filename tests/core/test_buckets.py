"""BucketManager: Algorithm 1 on a worked example, the dp boundary mode, and bucket bookkeeping."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bucket_scheduler.core.boundaries import BoundaryConfig, histogram_edges, optimal_boundaries
from bucket_scheduler.core.buckets import BucketManager

from .helpers import req


def ranges(mgr):
    return [(b.low, b.up, b.count) for b in mgr.buckets]


def test_algorithm1_worked_example():
    """N_max = 4, L_max = 1024, six requests of lengths 10, 20, 30, 100, 200, 700.

    Split (total 6 > 4):
      [0,1024) holds 6 > 4, below m=512: 5 > 3      -> [0,512) [512,1024)
      [0,512)  holds 5 > 4, below m=256: 5 > 2.5    -> [0,256) [256,512)
      [0,256)  holds 5 > 4, below m=128: 4 > 2.5    -> [0,128) [128,256)
      [0,128)  holds 4, not > 4                      -> stays
    Merge once total < 0.5 * N_max = 2, one neighbour pair per call, emptiest union first.
    """
    mgr = BucketManager(1024, BoundaryConfig(bucket_mode="algorithm1", max_buckets=8))
    rs = {n: req(n, prompt=n) for n in (10, 20, 30, 100, 200, 700)}
    for r in rs.values():
        mgr.add(r)
    mgr.rebalance(lambda b: 4)
    assert ranges(mgr) == [(0, 128, 4), (128, 256, 1), (256, 512, 0), (512, 1024, 1)]
    assert mgr.splits == 3
    mgr.rebalance(lambda b: 4)  # nothing changes while 2 <= total (hysteresis band)
    assert mgr.boundaries() == [128, 256, 512]

    for n in (10, 20, 30, 100):
        mgr.remove(rs[n])
    mgr.rebalance(lambda b: 4)  # total 2: still not < 2
    assert mgr.boundaries() == [128, 256, 512]
    mgr.remove(rs[200])  # total 1 < 2: merge the emptiest neighbours first
    mgr.rebalance(lambda b: 4)
    assert ranges(mgr) == [(0, 256, 0), (256, 512, 0), (512, 1024, 1)]
    mgr.rebalance(lambda b: 4)
    assert ranges(mgr) == [(0, 512, 0), (512, 1024, 1)]
    mgr.rebalance(lambda b: 4)
    assert ranges(mgr) == [(0, 1024, 1)]
    assert mgr.merges == 3


def test_algorithm1_does_not_split_when_mass_is_above_midpoint():
    mgr = BucketManager(1024, BoundaryConfig(bucket_mode="algorithm1"))
    for i in range(10):
        mgr.add(req(i, prompt=600 + i))
    mgr.rebalance(lambda b: 4)
    assert ranges(mgr) == [(0, 1024, 10)]  # only 0 of 10 below 512


def test_algorithm1_respects_max_buckets():
    mgr = BucketManager(1 << 14, BoundaryConfig(bucket_mode="algorithm1", max_buckets=3))
    for i in range(50):
        mgr.add(req(i, prompt=1 + i))
    mgr.rebalance(lambda b: 2)
    assert len(mgr.buckets) == 3


def brute_force(tops, counts, sums, k):
    best = None
    n = len(tops)
    for g in range(1, min(k, n) + 1):
        for cuts in itertools.combinations(range(1, n), g - 1):
            edges = [0, *cuts, n]
            pad = sum(sum(counts[i:j]) * tops[j - 1] - sum(sums[i:j]) for i, j in zip(edges, edges[1:]))
            if best is None or pad < best - 1e-9:
                best = pad
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20), st.integers(1, 5)), min_size=1, max_size=8), st.integers(1, 4))
def test_dp_boundaries_are_optimal(bins, k):
    tops, counts, sums = [], [], []
    top = 0
    for width, count in bins:
        top += width
        tops.append(top)
        counts.append(count)
        sums.append(count * (top - width // 2 - 1))
    bounds, pad = optimal_boundaries(tops, counts, sums, k)
    assert pad == pytest.approx(brute_force(tops, counts, sums, k))
    assert len(bounds) <= k - 1 and bounds == sorted(set(bounds))


def test_dp_mode_places_boundaries_around_length_clusters():
    mgr = BucketManager(8192, BoundaryConfig(bucket_mode="dp", max_buckets=2, dp_min_observations=20))
    for i in range(40):
        mgr.add(req(i, prompt=100 + i % 5 if i % 2 else 3000 + i % 7))
    mgr.rebalance(lambda b: 8)
    (cut,) = mgr.boundaries()
    assert 104 < cut <= 3000
    assert [b.count for b in mgr.buckets] == [20, 20]


def test_dp_hysteresis_keeps_boundaries_when_gain_is_small():
    mgr = BucketManager(8192, BoundaryConfig(bucket_mode="dp", max_buckets=3, dp_refresh=10, dp_min_observations=10))
    for i in range(10):
        mgr.add(req(i, prompt=[100, 1000, 5000][i % 3]))
    mgr.rebalance(lambda b: 3)
    first = mgr.boundaries()
    assert len(first) == 2
    for i in range(10, 20):  # same distribution: the optimum cannot improve by 5%
        mgr.add(req(i, prompt=[100, 1000, 5000][i % 3]))
    mgr.rebalance(lambda b: 3)
    assert mgr.boundaries() == first and mgr.replacements == 1


def test_histogram_edges_cover_range_with_relative_width():
    e = histogram_edges(16384)
    assert e[0] == 0 and e[-1] == 16384 and all(a < b for a, b in zip(e, e[1:]))
    assert e[1] - e[0] == 8
    assert (e[-1] - e[-2]) / e[-2] <= 0.03


def test_remove_and_select_order():
    mgr = BucketManager(4096, BoundaryConfig(bucket_mode="fixed", boundaries=[1000]))
    a = req("a", prompt=2000, new=10, t=0.0)
    b = req("b", prompt=100, new=10, t=0.0)
    c = req("c", prompt=150, new=10, t=0.0, online=True)
    for r in (a, b, c):
        mgr.add(r)
    assert mgr.select().low == 0 and mgr.select().head().req is c  # online first
    assert mgr.remove(c) and not mgr.remove(c)
    assert mgr.select().head().req is b  # shortest job first among offline
    assert mgr.oldest_arrival(exclude=mgr.buckets[0]) == 0.0
    assert mgr.pop_head(mgr.buckets[1]) is a and len(mgr) == 1


def test_set_boundaries_redistributes_waiting():
    mgr = BucketManager(4096, BoundaryConfig(bucket_mode="fixed", boundaries=[1000]))
    for i, n in enumerate((10, 500, 1500, 3000)):
        mgr.add(req(i, prompt=n))
    mgr.set_boundaries([200, 2000])
    assert ranges(mgr) == [(0, 200, 1), (200, 2000, 2), (2000, 4096, 1)]


def test_histogram_coarsening_keeps_totals_and_bounds_bins():
    mgr = BucketManager(16384, BoundaryConfig(bucket_mode="dp", dp_min_observations=10**9))
    lengths = [7 + (i * 37) % 16000 for i in range(3000)]
    for i, n in enumerate(lengths):
        mgr.add(req(i, prompt=n))
    full = mgr.mode.hist.bins()
    coarse = mgr.mode.hist.bins(max_bins=50)
    assert len(full[0]) > 50 >= len(coarse[0])
    assert sum(coarse[1]) == sum(full[1]) == len(lengths)
    assert sum(coarse[2]) == sum(full[2]) == sum(lengths)
    assert coarse[0][-1] == full[0][-1] and coarse[0] == sorted(coarse[0])


# --- point: splits that always make progress, buckets that hold batches -------------------


def spans(mgr):
    """(count, shortest, longest) waiting length per bucket."""
    out = []
    for b in mgr.buckets:
        lens = sorted(e.req.seq_len for e in b.live_entries())
        out.append((len(lens), lens[0] if lens else None, lens[-1] if lens else None))
    return out


def assert_partition(mgr, max_len):
    assert mgr.buckets[0].low == 0 and mgr.buckets[-1].up == max_len
    assert all(a.up == b.low and a.low < a.up for a, b in zip(mgr.buckets, mgr.buckets[1:]))
    assert len(mgr.buckets) <= mgr.config.max_buckets
    for b in mgr.buckets:
        assert all(b.holds(e.req.seq_len) for e in b.live_entries())


def test_midpoint_rule_never_splits_a_queue_above_the_midpoint_but_median_does():
    """100 waiting requests in [1100, 2000), L = 2048, N_max = 8."""
    lengths = [1100 + (i * 9) % 900 for i in range(100)]
    paper = BucketManager(2048, BoundaryConfig(bucket_mode="algorithm1"))
    default = BucketManager(2048, BoundaryConfig(bucket_mode="median"))
    for mgr in (paper, default):
        for i, n in enumerate(lengths):
            mgr.add(req(i, prompt=n))
        mgr.rebalance(lambda b: 8)
    assert ranges(paper) == [(0, 2048, 100)]  # the paper's rule, kept under its name
    assert_partition(default, 2048)
    counts = [c for c, _, _ in spans(default)]
    assert sum(counts) == 100 and len(counts) >= 6
    assert all(8 <= c < 16 for c in counts if c)  # each bucket a full batch, none two


def test_median_buckets_merge_when_the_queue_drains():
    mgr = BucketManager(2048, BoundaryConfig(bucket_mode="median"))
    reqs = [req(i, prompt=1100 + 9 * i) for i in range(100)]
    for r in reqs:
        mgr.add(r)
    mgr.rebalance(lambda b: 8)
    assert len(mgr.buckets) >= 6
    for r in reqs[:95]:
        mgr.remove(r)
    for _ in range(len(mgr.buckets)):
        mgr.rebalance(lambda b: 8)
    assert len(mgr.buckets) == 1 and len(mgr) == 5  # 5 < N_max: one bucket, one batch


def test_median_leaves_identical_lengths_alone():
    mgr = BucketManager(2048, BoundaryConfig(bucket_mode="median"))
    for i in range(50):
        mgr.add(req(i, prompt=1500 + i % 3))
    mgr.rebalance(lambda b: 4)
    assert len(mgr.buckets) == 1  # nothing to gain: they pad by at most 2 tokens


@settings(max_examples=80, deadline=None)
@given(
    st.integers(0, 3000),  # where the cluster starts
    st.integers(1, 1000),  # how wide it is
    st.lists(st.integers(0, 10**6), min_size=1, max_size=150),
    st.integers(1, 16),  # N_max
    st.integers(2, 32),  # max_buckets
)
def test_median_split_makes_progress_on_skewed_queues(start, width, draws, n_max, max_buckets):
    max_len = 4096
    mgr = BucketManager(max_len, BoundaryConfig(bucket_mode="median", max_buckets=max_buckets))
    lengths = [min(max_len - 1, start + d % width) for d in draws]
    for i, n in enumerate(lengths):
        mgr.add(req(i, prompt=n))
    for _ in range(2 * max_buckets + 2):  # one merge per call: it settles, then nothing moves
        before = mgr.boundaries()
        mgr.rebalance(lambda b: n_max)
        if mgr.boundaries() == before:
            break
    else:
        raise AssertionError("boundaries keep moving on an unchanged queue")
    assert_partition(mgr, max_len)
    assert sum(c for c, _, _ in spans(mgr)) == len(draws)
    if len(mgr.buckets) < max_buckets:
        # no bucket holds two batches unless its lengths are too alike to be worth a cut
        for count, shortest, longest in spans(mgr):
            assert count < 2 * n_max or longest - shortest < 2 * mgr.config.min_bucket_width
    if len(draws) >= 2 * n_max and max(lengths) - min(lengths) >= 2 * mgr.config.min_bucket_width:
        assert len(mgr.buckets) > 1  # a skewed, splittable queue is split


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 999), min_size=1, max_size=200), st.data())
def test_fenwick_kth_is_the_kth_smallest(lengths, data):
    mgr = BucketManager(1000, BoundaryConfig(bucket_mode="fixed", boundaries=[500]))
    for i, n in enumerate(lengths):
        mgr.add(req(i, prompt=n))
    k = data.draw(st.integers(1, len(lengths)))
    assert mgr.lengths.kth(k) == sorted(lengths)[k - 1]


def test_dp_keeps_buckets_that_hold_batches():
    """24 waiting requests of all lengths with N_max = 8: at most 3 buckets, not one per cluster."""
    mgr = BucketManager(8192, BoundaryConfig(bucket_mode="dp", max_buckets=32, dp_min_observations=20))
    reqs = [req(i, prompt=50 + 330 * i) for i in range(24)]
    for r in reqs:
        mgr.add(r)
    mgr.rebalance(lambda b: 8)
    assert 1 < len(mgr.buckets) <= 3
    for r in reqs[:20]:  # the queue drains: the buckets merge at once, no waiting for a refresh
        mgr.remove(r)
    mgr.rebalance(lambda b: 8)
    assert len(mgr.buckets) == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 8000), min_size=1, max_size=120), st.integers(1, 12), st.integers(0, 119))
def test_dp_bucket_count_follows_n_max(lengths, n_max, drop):
    mgr = BucketManager(8192, BoundaryConfig(bucket_mode="dp", max_buckets=32, dp_refresh=10, dp_min_observations=10))
    reqs = [req(i, prompt=n) for i, n in enumerate(lengths)]
    for r in reqs:
        mgr.add(r)
    mgr.rebalance(lambda b: n_max)
    assert len(mgr.buckets) <= max(1, len(reqs) // n_max)
    for r in reqs[: min(drop, len(reqs))]:
        mgr.remove(r)
    mgr.rebalance(lambda b: n_max)
    assert_partition(mgr, 8192)
    assert len(mgr.buckets) <= max(1, len(mgr) // n_max)
