"""Fit the cost model's coefficients to measured engine steps (least squares, pure numpy).

One engine step (runtime/engine.py _run) is a sequence of forward passes: a batched prefill of
the whole prompts that fit the step's token budget (one forward per group of at most
PREFILL_GROUP_TOKENS padded slots, n x w each), one batch-1 forward per prompt chunk (n tokens
after p cached ones), then one decode forward over every row.  Its time is modelled as

    T = sum over prefill groups (a_p + b_p * n*w + c_p * n*w^2)
      + sum over chunks         (a_c + b_c * n   + c_c * n*(p + n))
      + [decode] (a_d + b_d * bs*(ctx_max + 1) + c_d * bs)

which is core/clock.py's CostModel.engine_step_ms (padded=True, one decode coefficient set):
each constant is paid once per forward (a pass reads the weights once), and a chunk's
attention grows with the prefix it attends to.  Two stages, plain least squares on
milliseconds (so the model reproduces total busy time, what throughput and queueing depend
on; relative least squares was tried and under-predicts the total by 10-40% on noisy steps):
the decode coefficients from the steps that only decode, then the prefill and chunk
coefficients from the other steps, less their predicted decode part.  Fitting all at once
let a few multi-second prefill steps absorb the decode terms.  With too few steps holding
chunks (or whole prefills) to tell the two apart, chunks share the prefill coefficients.
Coefficients are kept non-negative (an active-set loop: a negative one is fixed at 0 and the
rest refitted), so the model never predicts faster steps for more work.

Where the engine runs a step as ONE forward pass (chunked prefill with the mixed step: its
chunks, a whole prompt being one with prefix 0, and the decode of the rows already in the
batch), the step is a one-pass sample and is modelled as CostModel.mixed_step_ms:

    T = a + t * tokens + r * output rows + ca * sum(n * (p + n)) + da * bs*(ctx_max + 1)

fitted in one stage (one constant a step, so no term can absorb another pass's constant) on
the one-pass steps alone; the three-pass coefficients come from the other steps, so one fit
serves a mix of policies (static and uellm do not chunk and keep three passes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from bucket_scheduler.core.clock import CostModel, mixed_features
from bucket_scheduler.core.prefill import prefill_groups

MIN_STEPS_PER_KIND = 6  # steps with chunks and steps with whole prefills, to fit chunks apart


@dataclass(frozen=True)
class StepSample:
    prefill_lens: tuple[int, ...]  # whole prompts prefilled in the batched forward(s)
    decode_lens: tuple[int, ...]  # KV length of every decoded row
    seconds: float  # wall time
    cpu_seconds: float | None = None  # CPU time of the engine thread (one torch thread: the step's own work)
    chunks: tuple[tuple[int, int], ...] = ()  # (cached prefix, tokens) of every chunk forward
    mixed: bool = False  # one pass (runner.step): chunks, whole prompts among them, and decode_lens' rows

    def on(self, clock: str) -> "StepSample":
        """This sample timed by `clock` ("wall" or "cpu")."""
        if clock == "wall":
            return self
        return replace(self, seconds=self.cpu_seconds)

    @property
    def groups(self) -> list[tuple[int, ...]]:
        lens = self.prefill_lens
        return [lens[i:j] for i, j in prefill_groups(list(lens))]

    @property
    def prefills(self) -> bool:
        return bool(self.prefill_lens or self.chunks)


def prefill_features(s: StepSample) -> list[float]:
    """[forwards, padded slots, padded slots x width] of the batched prefill groups."""
    f = [0.0, 0.0, 0.0]
    for g in s.groups:
        n, w = len(g), max(g)
        f[0] += 1.0
        f[1] += n * w
        f[2] += n * w * w
    return f


def chunk_features(s: StepSample) -> list[float]:
    """[forwards, tokens, tokens x attended positions] of the chunk forwards."""
    return [float(len(s.chunks)), float(sum(n for _, n in s.chunks)), float(sum(n * (p + n) for p, n in s.chunks))]


def decode_features(s: StepSample) -> list[float]:
    if not s.decode_lens:
        return [0.0, 0.0, 0.0]
    bs = len(s.decode_lens)
    return [1.0, bs * (max(s.decode_lens) + 1), bs]


def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    free = list(range(x.shape[1]))
    coef = np.zeros(x.shape[1])
    while free:
        sol, *_ = np.linalg.lstsq(x[:, free], y, rcond=None)
        if (sol >= 0).all():
            coef[:] = 0
            coef[free] = sol
            return coef
        free.pop(int(np.argmin(sol)))
    return coef


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)  # columns of very different size
    return _nnls(x / scale, y) / scale


def fit_cost_model(samples: list[StepSample]) -> CostModel:
    """Milliseconds, like DistServe's coefficients.  The three-pass terms from the three-pass
    steps, the one-pass terms from the one-pass steps; a kind with no steps keeps its defaults
    (it is never priced: no replay of these runs takes that path)."""
    one = [s for s in samples if s.mixed]
    three = [s for s in samples if not s.mixed]
    cost = fit_three_pass(three) if three or not one else CostModel(padded=True)
    if one:
        cost = replace(cost, mixed=fit_one_pass(one))
    return cost


def fit_one_pass(samples: list[StepSample]) -> tuple[float, float, float, float, float]:
    with_chunks = sum(bool(s.chunks) for s in samples)
    with_rows = sum(bool(s.decode_lens) for s in samples)
    if not with_chunks or not with_rows:
        raise ValueError(f"need one-pass steps with chunks and with decode rows to fit, got {with_chunks} and {with_rows}")
    x = np.array([mixed_features(s.chunks, s.decode_lens) for s in samples], dtype=float)
    a, t, r, ca, da = (float(v) for v in _fit(x, np.array([s.seconds * 1000.0 for s in samples])))
    return (a, t, r, ca, da)


def fit_three_pass(samples: list[StepSample]) -> CostModel:
    decode_only = [s for s in samples if s.decode_lens and not s.prefills]
    prefills = [s for s in samples if s.prefills]
    if not decode_only or not prefills:  # fewer than three of either: least squares takes the least-norm fit
        raise ValueError(f"need decode-only steps and prefill steps to fit, got {len(decode_only)} and {len(prefills)}")
    xd = np.array([decode_features(s) for s in decode_only], dtype=float)
    a_d, b_d, c_d = (float(v) for v in _fit(xd, np.array([s.seconds * 1000.0 for s in decode_only])))
    dec = CostModel(decode_small=(a_d, b_d, c_d), decode_switch_bs=1 << 30, padded=True)
    yp = np.array([s.seconds * 1000.0 - dec.decode_ms(list(s.decode_lens)) for s in prefills])
    apart = (sum(bool(s.chunks) for s in prefills) >= MIN_STEPS_PER_KIND
             and sum(bool(s.prefill_lens) for s in prefills) >= MIN_STEPS_PER_KIND)
    if apart:
        xp = np.array([prefill_features(s) + chunk_features(s) for s in prefills], dtype=float)
        coef = [float(v) for v in _fit(xp, yp)]
        pre, chunk = tuple(coef[:3]), tuple(coef[3:])
    else:
        xp = np.array([np.add(prefill_features(s), chunk_features(s)) for s in prefills], dtype=float)
        pre, chunk = tuple(float(v) for v in _fit(xp, yp)), None
    return CostModel(prefill=pre, decode_small=(a_d, b_d, c_d), decode_large=(a_d, b_d, c_d),
                     decode_switch_bs=1 << 30, padded=True, chunk=chunk)


def predict_ms(cost: CostModel, s: StepSample) -> float:
    if s.mixed:
        return cost.mixed_step_ms(s.chunks, s.decode_lens)
    return cost.engine_step_ms(s.groups, s.chunks, s.decode_lens)


def fit_error(cost: CostModel, samples: list[StepSample]) -> dict:
    """Total predicted / measured step time, and the median relative error of single steps."""
    pred = [predict_ms(cost, s) for s in samples]
    meas = [s.seconds * 1000.0 for s in samples]
    rel = sorted(abs(p - m) / m for p, m in zip(pred, meas) if m > 0)
    return {"steps": len(samples), "total_ratio": round(sum(pred) / sum(meas), 4) if sum(meas) else None,
            "median_abs_rel_err": round(rel[len(rel) // 2], 4) if rel else None}
