"""Workload construction: trace reading, shaping, seeding, exact-length prompts, arrivals."""

from __future__ import annotations

import random

import pytest

from bucket_scheduler.core.trace import TraceRow, load_trace
from bucketserve_bench.workload import (
    LengthShaping,
    PromptBuilder,
    WorkloadSpec,
    apply_slo,
    build_workload,
    poisson_offsets,
    sample_lengths,
)


class WordTokenizer:
    """A fake byte-level-BPE-like tokenizer: each space-led word of the vocabulary is one
    token; anything else is one token per character (so a wrong prompt has a wrong length)."""

    def __init__(self, words):
        self.vocab = {w: i for i, w in enumerate(words)}
        self.inv = {i: w for w, i in self.vocab.items()}

    def get_vocab(self):
        return dict(self.vocab)

    def decode(self, ids):
        return "".join(self.inv[i] for i in ids)

    def encode(self, text, add_special_tokens=False):
        ids = []
        for part in text.split(" ")[1:] if text.startswith(" ") else text.split(" "):
            piece = " " + part
            if piece in self.vocab:
                ids.append(self.vocab[piece])
            else:
                ids.extend(range(1000, 1000 + len(piece)))
        return ids


WORDS = [" " + w for w in "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu".split()]
WORDS += [" " + a + b for a in ("red", "blue", "green") for b in ("cat", "dog", "owl", "fox", "bee", "ant", "elk", "yak", "emu", "ram")]
WORDS += ["X", " Capital", " a1"]  # not lowercase-word tokens: must stay out of the pool


def rows(n: int, source: str, base: int) -> list[TraceRow]:
    return [TraceRow(0.0, base + 7 * i, 1 + i % 50, source) for i in range(n)]


TRACES = {"conv": rows(300, "conv", 10), "code": rows(200, "code", 2000)}


def test_read_trace(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n2023-11-16 18:15:50.99,396,109\n")
    assert [(r.prompt_len, r.output_len, r.source) for r in load_trace(p)] == [(374, 44, "t"), (396, 109, "t")]


def test_shaping_scales_then_clips():
    s = LengthShaping(prompt_scale=0.5, output_scale=0.1, min_prompt=8, max_prompt=100, min_output=2, max_output=30)
    assert s.apply(TraceRow(0.0, 60, 200, "x")) == (30, 20)
    assert s.apply(TraceRow(0.0, 4, 5, "x")) == (8, 2)
    assert s.apply(TraceRow(0.0, 10_000, 10_000, "x")) == (100, 30)
    assert "x0.5" in s.describe() and "[8, 100]" in s.describe()


def test_prompt_builder_exact_lengths_and_pool():
    tok = WordTokenizer(WORDS)
    b = PromptBuilder(tok)
    assert "X" not in b.words and " Capital" not in b.words and " a1" not in b.words
    rng = random.Random(1)
    for n in (1, 2, 17, 300):
        assert len(tok.encode(b.build(n, rng))) == n


def test_workload_is_seeded_and_mixed():
    tok = WordTokenizer(WORDS)
    spec = WorkloadSpec(traces=("conv", "code"), num_requests=80, seed=3, online_fraction=0.5,
                        shaping=LengthShaping(min_output=1, max_prompt=100_000, max_output=1000))
    a = build_workload(spec, tok, TRACES)
    b = build_workload(spec, tok, TRACES)
    assert [(r.prompt, r.prompt_tokens, r.output_tokens, r.online) for r in a] == [(r.prompt, r.prompt_tokens, r.output_tokens, r.online) for r in b]
    assert {r.source for r in a} == {"conv", "code"}
    assert 10 < sum(r.online for r in a) < 70
    valid = {(row.prompt_len, row.output_len) for rs in TRACES.values() for row in rs}
    assert all((r.prompt_tokens, r.output_tokens) in valid for r in a)  # lengths come from the trace
    assert all(len(tok.encode(r.prompt)) == r.prompt_tokens for r in a)
    other = build_workload(WorkloadSpec(traces=("conv", "code"), num_requests=80, seed=4, shaping=spec.shaping), tok, TRACES)
    assert [r.prompt_tokens for r in other] != [r.prompt_tokens for r in a]


def test_lengths_do_not_depend_on_the_class_mix():
    # Changing the online share must not change which lengths are drawn (separate streams).
    spec1 = WorkloadSpec(num_requests=50, seed=9, online_fraction=0.2)
    spec2 = WorkloadSpec(num_requests=50, seed=9, online_fraction=0.9)
    assert [x[1:] for x in sample_lengths(spec1, TRACES)] == [x[1:] for x in sample_lengths(spec2, TRACES)]


def test_poisson_offsets_same_pattern_at_every_rate():
    slow = poisson_offsets(200, 1.0, seed=5)
    fast = poisson_offsets(200, 4.0, seed=5)
    assert slow[0] == 0.0 and all(b >= a for a, b in zip(slow, slow[1:]))
    assert fast == pytest.approx([t / 4.0 for t in slow])
    mean_gap = slow[-1] / 199
    assert 0.7 < mean_gap < 1.3  # exponential gaps with mean 1/rate
    assert poisson_offsets(200, 1.0, seed=6) != slow
    with pytest.raises(ValueError):
        poisson_offsets(3, 0.0, seed=1)


def test_apply_slo_only_to_online():
    tok = WordTokenizer(WORDS)
    reqs = build_workload(WorkloadSpec(num_requests=30, seed=1), tok, TRACES)
    apply_slo(reqs, 500.0, 50.0)
    for r in reqs:
        assert (r.slo_ttft_ms, r.slo_tpot_ms) == ((500.0, 50.0) if r.online else (None, None))


def test_fresh_prompts_keep_everything_but_the_text():
    from bucketserve_bench.workload import with_fresh_prompts

    tok = WordTokenizer(WORDS)
    builder = PromptBuilder(tok)
    reqs = build_workload(WorkloadSpec(num_requests=20, seed=2), tok, TRACES, builder=builder)
    apply_slo(reqs, 400.0, 40.0)
    a = with_fresh_prompts(reqs, builder, "rate=1")
    b = with_fresh_prompts(reqs, builder, "rate=1")
    c = with_fresh_prompts(reqs, builder, "rate=2")
    assert [r.prompt for r in a] == [r.prompt for r in b]  # the same texts for every system
    assert all(x.prompt != y.prompt for x, y in zip(a, c) if x.prompt_tokens > 3)  # new texts for another run
    assert all(x.prompt != y.prompt for x, y in zip(a, reqs) if x.prompt_tokens > 3)
    for x, y in zip(a, reqs):
        assert (x.prompt_tokens, x.output_tokens, x.online, x.slo_ttft_ms) == (y.prompt_tokens, y.output_tokens, y.online, y.slo_ttft_ms)
        assert len(tok.encode(x.prompt)) == x.prompt_tokens
