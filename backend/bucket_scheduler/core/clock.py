"""Cost-model clock: how long one engine step takes, from the token slots it computes.

Model (DistServe's simulator, milliseconds; see the project's paper notes):

    prefill  T = a_p + b_p * sum(L_i) + c_p * sum(L_i^2)
    decode   T = a_d + b_d * sum(ctx_j + 1) + c_d * bs

One engine step prefills the requests admitted this step and decodes the rest
of the running batch; its time is the sum of the two parts (a part with no
sequences costs nothing).  In a padded runtime (the default, what BucketServe's
runner does) every sequence is computed at the batch's longest length, so the
sums run over padded slots:  sum(L_i) = N * L_max,  sum(L_i^2) = N * L_max^2,
sum(ctx_j + 1) = bs * (ctx_max + 1).  With padded=False the actual lengths are
used (a paged runtime).  Step time therefore grows with computed token slots,
padding included.

Our torch engine's step (engine_step_ms, what the replay of a CPU run uses) is a sequence of
forward passes, each paying its constant term once (each reads the weights once):

    batched prefill  one forward per group of whole prompts (padded: n * L_max slots)
    prompt chunk     one batch-1 forward per chunk of n tokens after p cached ones:
                     a_c + b_c * n + c_c * n * (p + n)   (its n queries attend to p + n positions)
    decode           one forward over every row

`chunk` None: a chunk costs what a prefill of its tokens does (the prefill coefficients).

With chunked prefill and the mixed step on, our engine runs a step as ONE forward pass
(mixed_step_ms): every prompt chunk of the step (a whole prompt is one chunk, prefix 0) and one
decode token for every row already in the batch.  The token-wise work (matmuls, norms, MLP)
runs once over all tokens of the pass and the weights are read once; only attention and the
output rows (logits) go segment by segment:

    one pass   a + t * tokens + r * rows + ca * sum(n * (p + n)) + da * attended decode slots

tokens = sum of chunk tokens + decode rows; rows = chunks + decode rows (one logit row each);
each chunk's n queries attend its p cached positions and itself; decode rows attend their KV
window (padded: bs * (ctx_max + 1), the batch's right-aligned buffer).

Default coefficients: OPT-13B on one A100-80GB (tensor parallel 1), the proxy
for Llama-2-13B; decode switches coefficient sets at batch size 95.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class CostModel:
    prefill: tuple[float, float, float] = (18.10, 0.10191, 7.122e-6)
    decode_small: tuple[float, float, float] = (19.93, 6.269e-4, 0.03851)  # bs < decode_switch_bs
    decode_large: tuple[float, float, float] = (7.166, 5.798e-4, 0.15831)
    decode_switch_bs: int = 95
    padded: bool = True
    chunk: tuple[float, float, float] | None = None  # engine: per chunk forward; None: the prefill's
    # engine's one-pass step: (a, per token, per output row, chunk attention, decode attention)
    mixed: tuple[float, float, float, float, float] | None = None

    def prefill_ms(self, lens: Sequence[int]) -> float:
        if not lens:
            return 0.0
        a, b, c = self.prefill
        if self.padded:
            n, m = len(lens), max(lens)
            return a + b * n * m + c * n * m * m
        return a + b * sum(lens) + c * sum(x * x for x in lens)

    def decode_ms(self, ctx_lens: Sequence[int]) -> float:
        bs = len(ctx_lens)
        if not bs:
            return 0.0
        a, b, c = self.decode_small if bs < self.decode_switch_bs else self.decode_large
        slots = bs * (max(ctx_lens) + 1) if self.padded else sum(ctx_lens) + bs
        return a + b * slots + c * bs

    def chunk_ms(self, prefix: int, n: int) -> float:
        """One chunk forward (batch 1): n prompt tokens after `prefix` cached ones."""
        a, b, c = self.chunk or self.prefill
        return a + b * n + c * n * (prefix + n)

    def engine_step_ms(self, whole_groups: Sequence[Sequence[int]], chunks: Sequence[tuple[int, int]],
                       decode_ctx_lens: Sequence[int]) -> float:
        """Our engine's step: a forward per group of whole prompts, one per (prefix, n) chunk,
        then one decode forward over the rows (their KV lengths)."""
        return (sum(self.prefill_ms(g) for g in whole_groups) + sum(self.chunk_ms(p, n) for p, n in chunks)
                + self.decode_ms(decode_ctx_lens))

    def mixed_step_ms(self, chunks: Sequence[tuple[int, int]], decode_ctx_lens: Sequence[int]) -> float:
        """Our engine's one-pass step: (prefix, n) chunks and one decode token per row (their KV
        lengths), all in one forward."""
        if self.mixed is None:
            raise ValueError("a one-pass engine step needs CostModel.mixed coefficients (fit them to the engine)")
        return sum(c * x for c, x in zip(self.mixed, mixed_features(chunks, decode_ctx_lens, self.padded)))

    def step_s(self, prefill_lens: Sequence[int], decode_ctx_lens: Sequence[int]) -> float:
        return (self.prefill_ms(prefill_lens) + self.decode_ms(decode_ctx_lens)) / 1000.0


def mixed_features(chunks: Sequence[tuple[int, int]], decode_ctx_lens: Sequence[int],
                   padded: bool = True) -> list[float]:
    """[pass, tokens, output rows, chunk attention n*(p+n), decode attended slots] of one pass
    (all zero for an empty step)."""
    bs = len(decode_ctx_lens)
    if not chunks and not bs:
        return [0.0] * 5
    dec_att = (bs * (max(decode_ctx_lens) + 1) if padded else sum(decode_ctx_lens) + bs) if bs else 0
    return [1.0, float(sum(n for _, n in chunks) + bs), float(len(chunks) + bs),
            float(sum(n * (p + n) for p, n in chunks)), float(dec_att)]


@dataclass
class SlotCounter:
    """Useful vs computed token slots of a padded runtime, over prefill and decode steps.

    Prefill of N prompts computes N * L_max slots (useful: sum L_i); a decode step
    over a running batch computes bs * ctx_max slots (useful: sum ctx_j).
    """

    useful: int = 0
    computed: int = 0

    def add(self, lens: Sequence[int]) -> None:
        if lens:
            self.useful += sum(lens)
            self.computed += len(lens) * max(lens)

    @property
    def efficiency(self) -> float:
        return self.useful / self.computed if self.computed else 1.0
