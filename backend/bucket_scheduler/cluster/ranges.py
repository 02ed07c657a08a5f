"""Which prompt-length range each replica serves: the core's boundary logic, applied to replicas.

The ranges cut the core's length histogram (core/boundaries.py: a `LengthHistogram` on
`histogram_edges` bins) into one group per replica, in one of two ways (`split`):
- "padding" (the default): the core's `dp` bucket boundaries (`optimal_boundaries`, the
  padding-optimal cut), moved only when the new ones cut expected padding by more than
  `hysteresis`, as in the core. The replica of long prompts gets most of the prefill work; the
  router's queued-work hand-over (routing.py) evens it out.
- "tokens": each replica gets an equal share of the observed prompt tokens (plus a decode share
  per request). Boundaries move only when the new ones cut the largest share's excess by more
  than `hysteresis` (relative to an equal share). Lost to "padding" in the cluster bench.
Until enough lengths were seen the ranges split [0, max_len) evenly.

Lengths are estimated tokens (UTF-8 bytes / 4, see prompt_length): the router needs an order
and a scale, not the exact count, and the ingress must not load a tokenizer per request.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

from bucket_scheduler.core.boundaries import LengthHistogram, optimal_boundaries

from .routing import DECODE_WEIGHT

BYTES_PER_TOKEN = 4
SPLITS = ("tokens", "padding")


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
    split: str = "padding"  # "padding": the core's padding-optimal cut; "tokens": equal work per replica

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")


def balanced_boundaries(tops: list[int], counts: list[float], sums: list[float], k: int,
                        base: float = DECODE_WEIGHT) -> list[int]:
    """Cut consecutive non-empty histogram bins (as optimal_boundaries takes them) into at most k
    groups of about equal work, a bin's work being its summed lengths + `base` per request.
    Every group keeps at least one bin; returns the exclusive upper edges of all groups but the last."""
    work = [s + base * c for c, s in zip(counts, sums)]
    total = sum(work)
    bounds, acc, j = [], 0.0, 0
    for g in range(1, min(k, len(tops))):
        target = total * g / k
        # the last bin of group g-1: leave at least one bin for each group still to come
        last = len(tops) - (min(k, len(tops)) - g)
        best, best_gap, run = None, None, acc
        for i in range(j, last):
            run += work[i]
            gap = abs(run - target)
            if best_gap is None or gap < best_gap:
                best, best_gap, best_acc = i, gap, run
        bounds.append(tops[best])
        acc, j = best_acc, best + 1
    return bounds


def group_shares(tops: list[int], counts: list[float], sums: list[float], bounds: list[int],
                 base: float = DECODE_WEIGHT) -> list[float]:
    """Each group's share of the work under the given inner boundaries."""
    shares = [0.0] * (len(bounds) + 1)
    for t, c, s in zip(tops, counts, sums):
        shares[bisect.bisect_left(bounds, t)] += s + base * c
    total = sum(shares) or 1.0
    return [x / total for x in shares]


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
        if self.config.split == "tokens":
            self._refresh_tokens()
        else:
            self._refresh_padding()

    def _refresh_tokens(self) -> None:
        bins = self._hist.bins()
        bounds = balanced_boundaries(*bins, self.groups)
        if len(bounds) < self.groups - 1:
            return  # fewer distinct lengths than replicas: keep the current ranges
        if self._learned:
            excess = max(group_shares(*bins, self._bounds)) * self.groups - 1.0
            if max(group_shares(*bins, bounds)) * self.groups - 1.0 >= excess - self.config.hysteresis:
                return
        self._learned = True
        self._bounds = list(bounds)

    def _refresh_padding(self) -> None:
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
