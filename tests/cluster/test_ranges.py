"""Replica length ranges: the core's dp boundaries over the observed lengths (pure Python)."""

import random

import pytest

from bucket_scheduler.cluster.ranges import LengthRanges, RangeConfig, balanced_boundaries, group_shares, prompt_length
from bucket_scheduler.core.boundaries import histogram_edges, optimal_boundaries


def test_even_ranges_until_enough_lengths_were_seen():
    r = LengthRanges(2, RangeConfig(max_len=2048, min_observations=32))
    for _ in range(31):
        r.observe(10)
    assert r.ranges() == [(0, 1024), (1024, 2048)]


def test_bimodal_lengths_are_cut_between_the_modes():
    r = LengthRanges(2, RangeConfig(max_len=2048, min_observations=32, refresh_every=32, split="padding"))
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
    r = LengthRanges(3, RangeConfig(max_len=1024, min_observations=len(lengths), split="padding"))
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


@pytest.mark.parametrize("split", ["padding", "tokens"])
def test_boundaries_hold_still_unless_the_cut_improves_by_the_hysteresis(split):
    r = LengthRanges(2, RangeConfig(max_len=2048, min_observations=20, refresh_every=20, split=split))
    for i in range(200):
        r.observe(40 if i % 2 else 1000)
    before = r.bounds()
    for i in range(40):  # the same mix again: nothing to gain
        r.observe(41 if i % 2 else 1001)
    assert r.bounds() == before


@pytest.mark.parametrize("split", ["padding", "tokens"])
def test_more_replicas_than_distinct_lengths_keeps_ranges_covering_everything(split):
    r = LengthRanges(4, RangeConfig(max_len=512, min_observations=8, split=split))
    for _ in range(50):
        r.observe(100)
    rngs = r.ranges()
    assert rngs[0][0] == 0 and rngs[-1][1] == 512 and len(rngs) == 4
    assert all(a[1] == b[0] for a, b in zip(rngs, rngs[1:]))


def _shares(r: LengthRanges, lengths: list[int]) -> list[float]:
    """Each range's share of the prompt tokens (+ the decode share) of the given lengths."""
    work = [0.0] * len(r.ranges())
    for n in lengths:
        work[r.group_of(n)] += n + 32
    return [w / sum(work) for w in work]


def test_token_split_gives_each_replica_an_equal_share_of_the_prompt_tokens():
    """Mostly short prompts and some long ones (the two traces' mix): the padding cut gives the
    long range most of the tokens; the token split moves the cut up until the shares are even."""
    rng = random.Random(3)
    lengths = [rng.randint(10, 120) if rng.random() < 0.7 else rng.randint(400, 512) for _ in range(600)]
    by = {}
    for split in ("padding", "tokens"):
        r = LengthRanges(2, RangeConfig(max_len=2048, min_observations=64, refresh_every=64, split=split))
        for n in lengths:
            r.observe(n)
        by[split] = _shares(r, lengths)
    assert max(by["padding"]) > 0.6, by  # the long range takes most of the work
    assert max(by["tokens"]) < 0.56, by  # about half each
    assert r.bounds()[0] > 400, r.bounds()  # the cut lies inside the long prompts' mode


def test_balanced_boundaries_keep_every_group_non_empty_and_shares_even():
    tops, counts, sums = [10, 20, 1000], [1, 1, 1], [5, 15, 990]
    bounds = balanced_boundaries(tops, counts, sums, 3, base=0)
    assert bounds == [10, 20]  # one huge bin: still three non-empty groups
    tops = list(range(8, 808, 8))
    counts = [4] * len(tops)
    sums = [4 * (t - 4) for t in tops]
    bounds = balanced_boundaries(tops, counts, sums, 4)
    shares = group_shares(tops, counts, sums, bounds)
    assert len(bounds) == 3 and bounds == sorted(bounds)
    assert max(shares) - min(shares) < 0.05, (bounds, shares)


def test_an_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split"):
        RangeConfig(split="random")


def test_prompt_length_of_completions_and_chat_bodies():
    assert prompt_length({"prompt": "abcd" * 10}) == 10
    assert prompt_length({"prompt": ["abcdefgh"]}) == 2
    assert prompt_length({"messages": [{"role": "user", "content": "abcd"}, {"role": "user", "content": [{"type": "text", "text": "abcd"}]}]}) == 2
    assert prompt_length({"prompt": "é"}) == 1  # bytes, not characters
    assert prompt_length({}) == 0
