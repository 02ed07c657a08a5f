"""Output-length predictors for output-length-driven policies (uellm).

- OraclePredictor: Request.predicted_output_len when the caller set it, else
  max_new_tokens (what UELLM's experiments do: they feed true lengths).
- HistogramPredictor: learns the output lengths of finished requests, per
  prompt-length class (powers of two), and predicts a quantile of them (the
  median by default), capped by max_new_tokens.  With fewer than `min_samples`
  observations in a class it falls back to all observations, then to max_new_tokens.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from .request import Request


class OutputLengthPredictor(Protocol):
    def predict(self, req: Request) -> int: ...

    def observe(self, req: Request, output_len: int) -> None: ...


class OraclePredictor:
    name = "oracle"

    def predict(self, req: Request) -> int:
        if req.predicted_output_len is not None:
            return int(req.predicted_output_len)
        return req.max_new_tokens

    def observe(self, req: Request, output_len: int) -> None:
        pass


class HistogramPredictor:
    name = "histogram"

    def __init__(self, quantile: float = 0.5, window: int = 2000, min_samples: int = 16):
        if not 0.0 <= quantile <= 1.0:
            raise ValueError("quantile must be in [0, 1]")
        self.quantile = quantile
        self.window = window
        self.min_samples = min_samples
        self._by_class: dict[int, deque[int]] = {}
        self._all: deque[int] = deque(maxlen=window)
        self._sorted_cache: dict[int | None, list[int]] = {}

    @staticmethod
    def _class(prompt_len: int) -> int:
        return max(0, prompt_len).bit_length()

    def observe(self, req: Request, output_len: int) -> None:
        c = self._class(req.prompt_len)
        self._by_class.setdefault(c, deque(maxlen=self.window)).append(output_len)
        self._all.append(output_len)
        self._sorted_cache.pop(c, None)
        self._sorted_cache.pop(None, None)

    def _quantile_of(self, key: int | None, samples: deque[int]) -> int:
        s = self._sorted_cache.get(key)
        if s is None:
            s = self._sorted_cache[key] = sorted(samples)
        return s[min(len(s) - 1, int(self.quantile * len(s)))]

    def predict(self, req: Request) -> int:
        c = self._class(req.prompt_len)
        samples = self._by_class.get(c)
        if samples is not None and len(samples) >= self.min_samples:
            guess = self._quantile_of(c, samples)
        elif len(self._all) >= self.min_samples:
            guess = self._quantile_of(None, self._all)
        else:
            return req.max_new_tokens
        return max(1, min(guess, req.max_new_tokens))


def make_predictor(name: str) -> OutputLengthPredictor:
    if name == "oracle":
        return OraclePredictor()
    if name == "histogram":
        return HistogramPredictor()
    raise ValueError(f"unknown output-length predictor {name!r}; use 'oracle' or 'histogram'")


__all__ = ["OraclePredictor", "HistogramPredictor", "OutputLengthPredictor", "make_predictor"]
