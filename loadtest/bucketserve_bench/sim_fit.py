"""Fit the cost model's coefficients to measured engine steps (least squares, pure numpy).

One engine step prefills the admitted prompts (padded to the longest: n x w slots) and
then decodes every running row; its measured time is modelled as

    T = [prefill] (a_p + b_p * n*w + c_p * n*w^2) + [decode] (a_d + b_d * bs*(ctx_max + 1) + c_d * bs)

which is core/clock.py's CostModel with padded=True and one decode coefficient set.
Two stages, plain least squares on milliseconds (so the model reproduces total busy
time, what throughput and queueing depend on; relative least squares was tried and
under-predicts the total by 10-40% on noisy steps): the decode coefficients from the
steps that only decode, then the prefill coefficients from the steps that prefill, less
their predicted decode part.  Fitting all six at once let a few multi-second prefill
steps absorb the decode terms.  Coefficients are kept non-negative (an active-set loop:
a negative one is fixed at 0 and the rest refitted), so the model never predicts faster
steps for more work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bucket_scheduler.core.clock import CostModel


@dataclass(frozen=True)
class StepSample:
    prefill_lens: tuple[int, ...]  # prompts prefilled this step
    decode_lens: tuple[int, ...]  # context length of every decoded row
    seconds: float  # wall time
    cpu_seconds: float | None = None  # CPU time of the engine thread (one torch thread: the step's own work)

    def on(self, clock: str) -> "StepSample":
        """This sample timed by `clock` ("wall" or "cpu")."""
        if clock == "wall":
            return self
        return StepSample(self.prefill_lens, self.decode_lens, self.cpu_seconds, self.cpu_seconds)


def features(s: StepSample) -> list[float]:
    f = [0.0] * 6
    if s.prefill_lens:
        n, w = len(s.prefill_lens), max(s.prefill_lens)
        f[0:3] = [1.0, n * w, n * w * w]
    if s.decode_lens:
        bs = len(s.decode_lens)
        f[3:6] = [1.0, bs * (max(s.decode_lens) + 1), bs]
    return f


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
    """Milliseconds, like DistServe's coefficients."""
    decode_only = [s for s in samples if s.decode_lens and not s.prefill_lens]
    prefills = [s for s in samples if s.prefill_lens]
    if not decode_only or not prefills:  # fewer than three of either: least squares takes the least-norm fit
        raise ValueError(f"need decode-only steps and prefill steps to fit, got {len(decode_only)} and {len(prefills)}")
    xd = np.array([features(s)[3:] for s in decode_only], dtype=float)
    a_d, b_d, c_d = (float(v) for v in _fit(xd, np.array([s.seconds * 1000.0 for s in decode_only])))
    dec = CostModel(decode_small=(a_d, b_d, c_d), decode_switch_bs=1 << 30, padded=True)
    xp = np.array([features(s)[:3] for s in prefills], dtype=float)
    yp = np.array([s.seconds * 1000.0 - dec.decode_ms(list(s.decode_lens)) for s in prefills])
    a_p, b_p, c_p = (float(v) for v in _fit(xp, yp))
    return CostModel(prefill=(a_p, b_p, c_p), decode_small=(a_d, b_d, c_d), decode_large=(a_d, b_d, c_d),
                     decode_switch_bs=1 << 30, padded=True)


def predict_ms(cost: CostModel, s: StepSample) -> float:
    return cost.prefill_ms(list(s.prefill_lens)) + cost.decode_ms(list(s.decode_lens))


def fit_error(cost: CostModel, samples: list[StepSample]) -> dict:
    """Total predicted / measured step time, and the median relative error of single steps."""
    pred = [predict_ms(cost, s) for s in samples]
    meas = [s.seconds * 1000.0 for s in samples]
    rel = sorted(abs(p - m) / m for p, m in zip(pred, meas) if m > 0)
    return {"steps": len(samples), "total_ratio": round(sum(pred) / sum(meas), 4) if sum(meas) else None,
            "median_abs_rel_err": round(rel[len(rel) // 2], 4) if rel else None}
