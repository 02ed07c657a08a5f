"""Which request runs first: the ordering keys the bucket scheduler uses.

Lower key runs earlier.  Both keys are fixed when a request is queued (they
depend on its arrival time and deadline, never on `now`), so heaps can hold
them; aging comes from the arrival term: waiting W seconds is worth
`aging_tokens_per_s * W` tokens of job size, so a long job overtakes the short
ones that keep arriving after at most (size gap / aging rate) seconds.

- online:  earliest deadline first (deadline = Request.effective_deadline(), or
           arrival + default_online_slo_s when the request gave none), minus
           priority * priority_weight_s.
- offline: shortest job first ("sjf", size = prompt + max new tokens) or longest
           job first ("ljf"), plus aging, minus priority * priority_weight_tokens.

Online requests always go before offline ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from .request import Request


@dataclass(frozen=True)
class OrderPolicy:
    offline_order: str = "sjf"  # sjf | ljf
    aging_tokens_per_s: float = 500.0
    default_online_slo_s: float = 1.0
    priority_weight_s: float = 1.0
    priority_weight_tokens: float = 1000.0

    def __post_init__(self):
        if self.offline_order not in ("sjf", "ljf"):
            raise ValueError(f"offline_order must be 'sjf' or 'ljf', got {self.offline_order!r}")
        if self.aging_tokens_per_s < 0:
            raise ValueError("aging_tokens_per_s must be >= 0")

    def deadline(self, req: Request) -> float:
        d = req.effective_deadline()
        return d if d is not None else req.arrival_time + self.default_online_slo_s

    def online_key(self, req: Request) -> float:
        return self.deadline(req) - req.priority * self.priority_weight_s

    def offline_key(self, req: Request) -> float:
        size = float(req.prompt_len + req.max_new_tokens)
        if self.offline_order == "ljf":
            size = -size
        return size + self.aging_tokens_per_s * req.arrival_time - req.priority * self.priority_weight_tokens

    def key(self, req: Request) -> tuple[int, float]:
        """(class rank, key): online (0) before offline (1)."""
        if req.is_online:
            return (0, self.online_key(req))
        return (1, self.offline_key(req))
