"""Sampling: greedy is argmax, seeds reproduce, top-k / top-p keep only allowed tokens."""

from __future__ import annotations

import torch

from bucket_scheduler.runtime.api import SamplingParams
from bucket_scheduler.runtime.runner import Runner
from bucket_scheduler.runtime.sampling import make_generator, sample

from .helpers import make_seq, random_prompts


def _logits(n=4, v=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * 3


def test_greedy_is_argmax():
    logits = _logits()
    got = sample(logits, [SamplingParams()] * 4, [None] * 4)
    assert got == logits.argmax(-1).tolist()


def test_banned_ids_are_never_picked():
    logits = _logits()
    best = logits.argmax(-1).tolist()
    got = sample(logits, [SamplingParams()] * 4, [None] * 4, banned=[[b] for b in best])
    assert all(g != b for g, b in zip(got, best))


def test_seed_reproduces_and_differs():
    logits = _logits(1, 200)
    p = SamplingParams(temperature=1.0)

    def draw(seed):
        gen = make_generator(seed, "cpu")
        return [sample(logits, [p], [gen])[0] for _ in range(20)]

    a, b, c = draw(7), draw(7), draw(8)
    assert a == b
    assert a != c


def test_top_k_and_top_p_restrict_choices():
    logits = _logits(1, 100, seed=3)
    top5 = set(torch.topk(logits[0], 5).indices.tolist())
    gen = make_generator(1, "cpu")
    picks = {sample(logits, [SamplingParams(temperature=2.0, top_k=5)], [gen])[0] for _ in range(300)}
    assert picks <= top5 and len(picks) > 1
    probs = torch.softmax(logits[0], -1)
    order = torch.argsort(probs, descending=True).tolist()
    nucleus, mass = set(), 0.0
    for t in order:
        nucleus.add(t)
        mass += probs[t].item()
        if mass >= 0.5:
            break
    picks = {sample(logits, [SamplingParams(temperature=1.0, top_p=0.5)], [gen])[0] for _ in range(300)}
    assert picks <= nucleus


def test_seeded_request_is_the_same_in_any_batch(tiny):
    """A seeded sampled request draws the same tokens alone and beside other requests."""
    model, tok = tiny
    prompts = random_prompts(model.config.vocab_size, 4, 11)

    def run(indices):
        runner = Runner(model, tok)
        seqs = [
            make_seq(tok, f"r{i}", prompts[i], 12, temperature=0.9, top_p=0.95, seed=100 + i)
            for i in indices
        ]
        for s in seqs:
            s.generator = make_generator(s.params.seed, "cpu")
        runner.prefill(seqs)
        while runner.rows:
            for s in [s for s in runner.rows if s.finished]:
                runner.remove(s.request_id)
            if runner.rows:
                runner.decode()
        return {s.request_id: s.output_ids for s in seqs}

    together = run([0, 1, 2, 3])
    for i in range(4):
        assert run([i])[f"r{i}"] == together[f"r{i}"]


def test_extreme_but_valid_values_never_produce_nan_or_raise():
    """Every value validation accepts: a temperature below MIN_TEMPERATURE is greedy (1e-40
    used to overflow to inf logits, NaN probabilities and a raising torch.multinomial)."""
    logits = _logits(6, 300).to(torch.bfloat16)
    greedy = logits.float().argmax(-1).tolist()
    params = [
        SamplingParams(temperature=1e-40),
        SamplingParams(temperature=5e-324),
        SamplingParams(temperature=float(torch.finfo(torch.float32).tiny) / 2),  # a float32 denormal
        SamplingParams(temperature=100.0, top_k=2**31 - 1),
        SamplingParams(temperature=1.0, top_p=float(torch.finfo(torch.float32).tiny)),
        SamplingParams(temperature=1.0, top_p=1.0, top_k=1),
    ]
    gens = [make_generator(2**63 - 1, "cpu") for _ in params]
    got = sample(logits, params, gens)
    assert got[:3] == greedy[:3]  # below the floor: greedy
    assert 0 <= got[3] < 300
    assert got[4] == greedy[4] and got[5] == greedy[5]  # top_p at its floor / top_k 1 keep only the best


def test_non_finite_logits_fall_back_to_the_argmax():
    logits = _logits(1, 50)
    logits[0, 7] = float("inf")
    got = sample(logits, [SamplingParams(temperature=0.7)], [make_generator(1, "cpu")])
    assert got == [7]
