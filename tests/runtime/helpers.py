"""Small builders shared by the runtime tests."""

from __future__ import annotations

import random

from bucket_scheduler.runtime.api import SamplingParams
from bucket_scheduler.runtime.detokenizer import IncrementalDetokenizer
from bucket_scheduler.runtime.sequence import Sequence


def random_prompts(vocab: int, n: int, seed: int, lo: int = 1, hi: int = 48) -> list[list[int]]:
    rng = random.Random(seed)
    # Ids from 3 up: 0-2 are the special tokens of the tiny tokenizer.
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def make_seq(tokenizer, rid: str, prompt: list[int], max_tokens: int, eos=(), **sampling) -> Sequence:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=not eos, **sampling)
    return Sequence(rid, list(prompt), params, frozenset(eos), IncrementalDetokenizer(tokenizer, prompt))
