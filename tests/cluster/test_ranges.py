"""Replica length ranges: the core's dp boundaries over the observed lengths (pure Python)."""

import random

from bucket_scheduler.cluster.ranges import LengthRanges, RangeConfig, prompt_length
from bucket_scheduler.core.boundaries import histogram_edges, optimal_boundaries


def test_even_ranges_until_enough_lengths_were_seen():
    r = LengthRanges(2, RangeConfig(max_len=2048, min_observations=32))
    for _ in range(31):
        r.observe(10)
    assert r.ranges() == [(0, 1024), (1024, 2048)]


def test_bimodal_lengths_are_cut_between_the_modes():
    r = LengthRanges(2, RangeConfig(max_len=2048, min_observations=32, refresh_every=32))
    rng = random.Random(1)
    for _ in range(400):
        r.observe(rng.randint(20, 80) if rng.random() < 0.6 else rng.randint(900, 1500))
    (lo0, up0), (lo1, up1) = r.ranges()
    assert lo0 == 0 and up1 == 2048 and up0 == lo1
    assert 80 < up0 <= 900, r.ranges()
    assert r.group_of(50) == 0 and r.group_of(1200) == 1 and r.group_of(10**6) == 1


def test_boundaries_are_the_cores_padding_optimal_ones():
    """Same lengths, same cut as core.boundaries.optimal_boundaries over the core's histogram bins."""
    lengths = [30] * 50 + [200] * 30 + [700] * 20
    r = LengthRanges(3, RangeConfig(max_len=1024, min_observations=len(lengths)))
    for n in lengths:
        r.observe(n)
    edges = histogram_edges(1024)
    bins: dict[int, list[int]] = {}
    for n in lengths:
        top = next(e for e in edges if e > n)
        bins.setdefault(top, []).append(n)
    tops = sorted(bins)
    expected, _ = optimal_boundaries(tops, [len(bins[t]) for t in tops], [sum(bins[t]) for t in tops], 3)
    assert r.bounds() == expected and len(expected) == 2


def test_boundaries_hold_still_unless_padding_drops_by_the_hysteresis():
    r = LengthRanges(2, RangeConfig(max_len=2048, min_observations=20, refresh_every=20))
    for i in range(200):
        r.observe(40 if i % 2 else 1000)
    before = r.bounds()
    for i in range(40):  # the same mix again: nothing to gain
        r.observe(41 if i % 2 else 1001)
    assert r.bounds() == before


def test_more_replicas_than_distinct_lengths_keeps_ranges_covering_everything():
    r = LengthRanges(4, RangeConfig(max_len=512, min_observations=8))
    for _ in range(50):
        r.observe(100)
    rngs = r.ranges()
    assert rngs[0][0] == 0 and rngs[-1][1] == 512 and len(rngs) == 4
    assert all(a[1] == b[0] for a, b in zip(rngs, rngs[1:]))


def test_prompt_length_of_completions_and_chat_bodies():
    assert prompt_length({"prompt": "abcd" * 10}) == 10
    assert prompt_length({"prompt": ["abcdefgh"]}) == 2
    assert prompt_length({"messages": [{"role": "user", "content": "abcd"}, {"role": "user", "content": [{"type": "text", "text": "abcd"}]}]}) == 2
    assert prompt_length({"prompt": "é"}) == 1  # bytes, not characters
    assert prompt_length({}) == 0
