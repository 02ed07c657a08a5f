"""A request's greedy tokens and logits do not depend on the batch it runs in.

Each request is run alone (no padding, no neighbours), then again inside a batch that is
left-padded, refilled mid-flight and has neighbours cancelled under it. fp32 logits must
agree within 1e-4 at every step and the greedy tokens must be identical.
"""

from __future__ import annotations

import random

import pytest
import torch

from bucket_scheduler.runtime.runner import Runner

from .helpers import make_seq, random_prompts

TOL = 1e-4


def run_alone(model, tok, prompt, max_tokens):
    logits = []
    runner = Runner(model, tok, on_logits=lambda s, row: logits.append(row))
    seq = make_seq(tok, "solo", prompt, max_tokens)
    runner.prefill([seq])
    while not seq.finished:
        runner.decode()
    return seq.output_ids, logits


def run_batched(model, tok, prompts, max_tokens, seed, max_prefill_tokens):
    """A random schedule: admit 1-3 at a time while others decode, cancel some."""
    rng = random.Random(seed)
    logits: dict[str, list[torch.Tensor]] = {}
    runner = Runner(
        model, tok, max_prefill_tokens=max_prefill_tokens,
        on_logits=lambda s, row: logits.setdefault(s.request_id, []).append(row),
    )
    pending = list(range(len(prompts)))
    seqs, cancelled, widths = {}, set(), []
    while pending or runner.rows:
        for s in [s for s in runner.rows if s.finished]:
            runner.remove(s.request_id)
        if pending and (not runner.rows or rng.random() < 0.35):
            take = pending[: rng.randint(1, 3)]
            pending = pending[len(take) :]
            new = [make_seq(tok, f"r{i}", prompts[i], max_tokens[i]) for i in take]
            seqs.update((s.request_id, s) for s in new)
            runner.prefill(new)
            for s in [s for s in new if s.finished]:
                runner.remove(s.request_id)
        if len(runner.rows) > 1 and rng.random() < 0.08:
            victim = rng.choice(runner.rows)
            runner.remove(victim.request_id)
            cancelled.add(victim.request_id)
        if runner.rows:
            runner.decode()
            kv = runner.kv
            # Left columns that are padding in every row have been dropped (finished rows
            # leave at once: a batch that just finished has no rows left to measure).
            if kv.lengths:
                widths.append((kv.width, max(kv.lengths)))
    return seqs, cancelled, logits, widths


@pytest.mark.parametrize(
    "seed,max_new,max_prefill_tokens",
    [(1, (1, 12), 8192), (2, (1, 12), 40), (3, (60, 140), 8192)],
)
def test_batched_equals_alone(tiny, seed, max_new, max_prefill_tokens):
    model, tok = tiny
    rng = random.Random(seed)
    prompts = random_prompts(model.config.vocab_size, 10, seed, lo=1, hi=48)
    max_tokens = [rng.randint(*max_new) for _ in prompts]
    seqs, cancelled, batched_logits, widths = run_batched(model, tok, prompts, max_tokens, seed, max_prefill_tokens)
    assert len(seqs) == len(prompts)
    worst = 0.0
    for i, prompt in enumerate(prompts):
        rid = f"r{i}"
        alone_ids, alone_logits = run_alone(model, tok, prompt, max_tokens[i])
        got = seqs[rid].output_ids
        if rid in cancelled:
            assert got == alone_ids[: len(got)]
        else:
            assert got == alone_ids
        assert len(batched_logits[rid]) == len(got)
        for a, b in zip(alone_logits, batched_logits[rid]):
            worst = max(worst, (a - b).abs().max().item())
    assert worst <= TOL, worst
    # The batch was really padded (not every request alone) and stayed tight.
    assert any(w > 1 for w, _ in widths)
    assert all(w <= m + 1 for w, m in widths)


def test_kv_bytes_follow_the_batch(tiny):
    model, tok = tiny
    runner = Runner(model, tok)
    assert runner.kv_bytes() == 0
    seqs = [make_seq(tok, f"r{i}", p, 5) for i, p in enumerate(random_prompts(model.config.vocab_size, 4, 7))]
    runner.prefill(seqs)
    held = runner.kv_bytes()
    kv = runner.kv
    per_elem = torch.empty((), dtype=runner.dtype).element_size()
    assert held == 2 * kv.num_layers * kv.rows_cap * kv.kv_heads * kv.cols_cap * kv.head_dim * per_elem
    assert held >= 2 * kv.num_layers * kv.kv_heads * kv.head_dim * per_elem * sum(kv.lengths)
    for s in seqs:
        runner.remove(s.request_id)
    assert runner.kv_bytes() == 0 and runner.num_rows == 0
