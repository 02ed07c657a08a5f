"""Per-request token choice from a batch of logits.

Greedy rows share one argmax; sampled rows go one by one because each has its own
torch.Generator (a seeded request draws the same tokens whatever batch it lands in).

NaN-proof for every value validation accepts: the math is float32, a temperature below
MIN_TEMPERATURE is greedy (dividing by 1e-40 overflows to inf and softmax gives NaN; vLLM
draws the same line at 1e-5), and a row whose probabilities are still not a distribution
(a model that produced inf logits) falls back to its argmax instead of raising.
"""

from __future__ import annotations

import torch

from .api import SamplingParams

MIN_TEMPERATURE = 1e-5  # below this a temperature means greedy (README, "Request inputs")


def make_generator(seed: int | None, device) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()  # fresh, non-deterministic
    else:
        gen.manual_seed(int(seed))
    return gen


def is_greedy(params: SamplingParams) -> bool:
    return params.temperature < MIN_TEMPERATURE


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """logits: [V] float32, already divided by the temperature."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already cover top_p (keeps at least one).
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(0, order, sorted_logits)
    return logits


def sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One sampled token from one row of float32 logits [V] (EOS bans already applied)."""
    row = _filter_top_k_top_p(logits / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(row, dim=-1)
    if not bool(torch.isfinite(probs).all()) or not float(probs.sum()) > 0.0:
        return int(logits.argmax().item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


def prepare_logits(logits: torch.Tensor, banned: list[list[int] | None] | None = None) -> torch.Tensor:
    """float32 logits with each row's banned ids (EOS before min_tokens) set to -inf."""
    logits = logits.float()
    if banned and any(banned):
        logits = logits.clone()
        for i, ids in enumerate(banned):
            if ids:
                logits[i, ids] = float("-inf")
    return logits


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    banned: list[list[int] | None] | None = None,
) -> list[int]:
    """logits: [n, V] (any float dtype). banned[i]: token ids row i may not pick now
    (EOS before min_tokens). Returns one token id per row."""
    logits = prepare_logits(logits, banned)
    greedy = logits.argmax(dim=-1).tolist()
    return [choose(logits, greedy, i, p, g) for i, (p, g) in enumerate(zip(params, generators))]


def choose(logits: torch.Tensor, greedy: list[int], i: int, params: SamplingParams,
           generator: torch.Generator | None) -> int:
    """Row i's token from prepared logits: its argmax when greedy, else a draw."""
    return greedy[i] if is_greedy(params) else sample_row(logits[i], params, generator)
