"""Which prompt-length range each replica serves: the core's boundary logic, applied to replicas.

The ranges are the core's `dp` bucket boundaries (core/boundaries.py: a `LengthHistogram` on `histogram_edges` bins and
`optimal_boundaries`, the padding-optimal cut of the observed length histogram) with one group
per replica. Until enough lengths were seen the ranges split [0, max_len) evenly. Boundaries
move only when the new ones cut expected padding by more than `hysteresis`, as in the core.

Lengths are estimated tokens (UTF-8 bytes / 4, see prompt_length): the router needs an order
and a scale, not the exact count, and the ingress must not load a tokenizer per request.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

from bucket_scheduler.core.boundaries import LengthHistogram, optimal_boundaries

BYTES_PER_TOKEN = 4


def prompt_length(body: dict) -> int:
    """Estimated prompt tokens of an OpenAI completions or chat body (0 when it has none)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = "".join(p for p in prompt if isinstance(p, str))
    if isinstance(prompt, str):
        text = prompt
    else:
        parts = []
        for m in body.get("messages") or []:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
            if isinstance(content, str):
                parts.append(content)
        text = "".join(parts)
    return -(-len(text.encode("utf-8", "replace")) // BYTES_PER_TOKEN)


@dataclass
class RangeConfig:
    max_len: int = 2048  # lengths at or past it count as max_len - 1
    min_observations: int = 32  # before this many, even ranges
    refresh_every: int = 64  # recompute after this many new lengths
    window: int = 2000  # lengths remembered
    hysteresis: float = 0.05


class LengthRanges:
    """Thread-safe: the ingress observes, the router reads."""

    def __init__(self, groups: int, config: RangeConfig | None = None):
        self.config = config or RangeConfig()
        self.groups = max(1, groups)
        self._hist = LengthHistogram(self.config.max_len, self.config.window)
        self._since = 0
        self._learned = False
        self._lock = threading.Lock()
        self._bounds = self._even()

    def _even(self) -> list[int]:
        step = self.config.max_len / self.groups
        return [round(step * i) for i in range(1, self.groups)]

    def _clamp(self, n: int) -> int:
        return min(max(0, int(n)), self.config.max_len - 1)

    def observe(self, length: int) -> None:
        with self._lock:
            self._hist.observe(self._clamp(length))
            self._since += 1
            due = self.config.refresh_every if self._learned else self.config.min_observations
            if self._since >= due:
                self._since = 0
                self._refresh()

    def _refresh(self) -> None:
        bounds, pad = optimal_boundaries(*self._hist.bins(), self.groups)
        if len(bounds) < self.groups - 1:
            return  # fewer distinct lengths than replicas: keep the current ranges
        if self._learned and pad >= self._hist.padding(self._bounds) * (1.0 - self.config.hysteresis):
            return
        self._learned = True
        self._bounds = list(bounds)

    def mean(self) -> float:
        """Mean of the remembered lengths (0 before any)."""
        with self._lock:
            return self._hist.mean()

    def bounds(self) -> list[int]:
        with self._lock:
            return list(self._bounds)

    def ranges(self) -> list[tuple[int, int]]:
        edges = [0, *self.bounds(), self.config.max_len]
        return list(zip(edges[:-1], edges[1:]))

    def group_of(self, length: int) -> int:
        return bisect.bisect_right(self.bounds(), self._clamp(length))
