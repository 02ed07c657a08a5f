"""The paper's workloads as length distributions, with Poisson arrivals and per-class SLOs.

The paper gives prompt statistics only (mean and median); a log-normal with that mean
and median is used for each (mu = ln(median), sigma = sqrt(2 ln(mean / median))):

- alpaca:    prompt mean 83.7, median 69 tokens (the paper's Alpaca figures).
- longbench: prompt mean 55,749, median 41,417 tokens, truncated to the model's context:
             prompt = min(length, max_model_len - output), as the paper truncates.
- mixed:     `mixed_long_share` (default 0.2) of the requests from longbench, the rest
             from alpaca: mostly short requests with a long tail.

Output lengths are not in the paper; they are chosen (log-normal, capped):
alpaca median 96 / mean 128 tokens, longbench median 64 / mean 96 (LongBench's tasks
cap generation at 32-512 tokens).  SLOs are DistServe's per-application targets
(OSDI 2024, Table 1): chatbot (OPT-13B) TTFT 0.25 s / TPOT 0.1 s for alpaca requests,
summarization (LongBench) TTFT 15 s / TPOT 0.15 s for longbench requests; in mixed each
request keeps the SLO of its source.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class LengthDist:
    """Log-normal lengths from a mean and a median, clipped to [lo, hi]."""

    mean: float
    median: float
    lo: int = 1
    hi: int = 1 << 30

    @property
    def sigma(self) -> float:
        return math.sqrt(2.0 * math.log(self.mean / self.median))

    def sample(self, rng: random.Random) -> int:
        x = rng.lognormvariate(math.log(self.median), self.sigma)
        return int(min(self.hi, max(self.lo, round(x))))


@dataclass(frozen=True)
class Source:
    name: str
    prompt: LengthDist
    output: LengthDist
    slo_ttft_s: float
    slo_tpot_s: float


ALPACA = Source("alpaca", LengthDist(83.7, 69), LengthDist(128, 96, 1, 512), 0.25, 0.1)
LONGBENCH = Source("longbench", LengthDist(55749, 41417), LengthDist(96, 64, 1, 512), 15.0, 0.15)
WORKLOADS = ("alpaca", "longbench", "mixed")


@dataclass(frozen=True)
class SimRequestSpec:
    """One request of a simulated workload."""

    index: int
    source: str
    arrival_s: float
    prompt_len: int
    output_len: int
    slo_ttft_s: float | None
    slo_tpot_s: float | None

    @property
    def online(self) -> bool:
        return self.slo_ttft_s is not None


@dataclass(frozen=True)
class PaperWorkload:
    name: str = "mixed"  # alpaca | longbench | mixed
    num_requests: int = 500
    max_model_len: int = 4096  # Llama-2's context
    mixed_long_share: float = 0.2
    seed: int = 0

    def __post_init__(self):
        if self.name not in WORKLOADS:
            raise ValueError(f"unknown workload {self.name!r}; use one of {WORKLOADS}")
        if self.num_requests < 1:
            raise ValueError("num_requests must be >= 1")

    def lengths(self) -> list[tuple[Source, int, int]]:
        """(source, prompt, output) per request; the same for every rate (same seed)."""
        rng = random.Random(self.seed)
        out = []
        for _ in range(self.num_requests):
            if self.name == "mixed":
                src = LONGBENCH if rng.random() < self.mixed_long_share else ALPACA
            else:
                src = LONGBENCH if self.name == "longbench" else ALPACA
            o = min(src.output.sample(rng), self.max_model_len // 2)
            p = min(src.prompt.sample(rng), self.max_model_len - o)
            out.append((src, p, o))
        return out

    def requests(self, rate: float | None, online: bool = True) -> list[SimRequestSpec]:
        """rate: Poisson arrivals at `rate` req/s; None: all at t=0 (the saturated / offline run).
        online=False drops the SLOs (offline requests, throughput runs)."""
        arrivals = random.Random(self.seed + 1)
        t = 0.0
        reqs = []
        for i, (src, p, o) in enumerate(self.lengths()):
            if rate is not None:
                t += arrivals.expovariate(rate)
            reqs.append(SimRequestSpec(i, src.name, t, p, o,
                                       src.slo_ttft_s if online else None, src.slo_tpot_s if online else None))
        return reqs


def describe(reqs: list[SimRequestSpec]) -> dict:
    """Length statistics of a request list (for the report)."""
    def stats(vals):
        s = sorted(vals)
        return {"mean": round(sum(s) / len(s), 1), "median": s[len(s) // 2], "max": s[-1]} if s else {}

    return {
        "requests": len(reqs),
        "prompt": stats([r.prompt_len for r in reqs]),
        "output": stats([r.output_len for r in reqs]),
        "sources": {k: sum(r.source == k for r in reqs) for k in sorted({r.source for r in reqs})},
    }
