"""Per-request results and what a run's report is computed from (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bucket_scheduler.core.stats import percentile


@dataclass
class RequestResult:
    index: int
    online: bool
    prompt_tokens: int
    expected_output_tokens: int
    send_time: float  # s since the run's start
    end_time: float | None = None  # s since the run's start: last response, or when it was given up
    ttft_s: float | None = None  # send -> first token
    e2e_s: float | None = None  # send -> last response
    output_tokens: int = 0  # as the server reported (or as counted from the stream)
    server_prompt_tokens: int | None = None  # the prompt length the server counted, if it says
    error: str | None = None
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    # times of every response that carried text, relative to send (s); the TPOT source
    token_times: list[float] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None and self.e2e_s is not None

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (0 for one-token outputs)."""
        if not self.ok or self.ttft_s is None:
            return None
        if self.output_tokens <= 1:
            return 0.0
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    @property
    def meets_slo(self) -> bool:
        """Online: finished, TTFT and TPOT within target. Offline: finished."""
        if not self.ok:
            return False
        if self.slo_ttft_ms is not None and (self.ttft_s is None or self.ttft_s * 1000 > self.slo_ttft_ms):
            return False
        if self.slo_tpot_ms is not None and (self.tpot_s is None or self.tpot_s * 1000 > self.slo_tpot_ms):
            return False
        return True


@dataclass
class RunSummary:
    system: str
    mode: str  # "rate" (Poisson) | "offline" (all at t=0)
    rate: float | None  # requests/s offered; None in offline mode
    num_requests: int
    completed: int
    errors: int
    duration_s: float  # first send -> last response (or the run's deadline)
    slo_attainment: float | None  # online requests meeting both targets / online requests
    slo_attainment_all: float  # every request, offline ones counted when they finish
    goodput_rps: float  # requests meeting their SLO per second
    throughput_rps: float
    output_tokens_per_s: float
    total_tokens_per_s: float  # prompt + output tokens of finished requests per second
    ttft_ms: dict
    tpot_ms: dict
    e2e_ms: dict
    padding_efficiency: float | None = None  # from the server's metrics, when it exports them
    server_metrics: dict = field(default_factory=dict)
    first_error: str | None = None
    timed_out: int = 0  # still running at the run's deadline, cancelled (counted among errors)


def _pcts(values_s: list[float]) -> dict:
    ms = [v * 1000 for v in values_s]
    return {"p50": percentile(ms, 50), "p99": percentile(ms, 99), "mean": (sum(ms) / len(ms)) if ms else None}


def summarize_run(system: str, mode: str, rate: float | None, results: list[RequestResult]) -> RunSummary:
    ok = [r for r in results if r.ok]
    online = [r for r in results if r.online]
    if results:
        ends = [r.end_time if r.end_time is not None else r.send_time + (r.e2e_s or 0.0) for r in results]
        duration = max(max(ends) - min(r.send_time for r in results), 1e-9)
    else:
        duration = 1e-9
    good = [r for r in results if r.meets_slo]
    errors = [r for r in results if r.error is not None]
    return RunSummary(
        system=system,
        mode=mode,
        rate=rate,
        num_requests=len(results),
        completed=len(ok),
        errors=len(errors),
        duration_s=duration,
        slo_attainment=(sum(r.meets_slo for r in online) / len(online)) if online else None,
        slo_attainment_all=(len(good) / len(results)) if results else 0.0,
        goodput_rps=len(good) / duration,
        throughput_rps=len(ok) / duration,
        # Tokens streamed to requests given up at the deadline count too: they were produced in the window.
        output_tokens_per_s=sum(r.output_tokens for r in results) / duration,
        total_tokens_per_s=sum(r.output_tokens + r.prompt_tokens for r in ok) / duration,
        ttft_ms=_pcts([r.ttft_s for r in ok if r.ttft_s is not None]),
        tpot_ms=_pcts([r.tpot_s for r in ok if r.tpot_s is not None]),
        e2e_ms=_pcts([r.e2e_s for r in ok]),
        first_error=errors[0].error if errors else None,
        timed_out=sum(1 for r in errors if r.error.startswith("timed out")),
    )


@dataclass
class CapacityEstimate:
    """The highest request rate held at the target attainment, from a sweep."""

    rate: float | None
    bound: str  # "interpolated" | "at_least" (every rate held) | "below" (none held) | "none"


def rate_at_attainment(points: list[tuple[float, float]], target: float = 0.8) -> CapacityEstimate:
    """Highest rate at which attainment stays >= target, interpolated linearly.

    points: (rate, attainment) pairs, any order.  Walks rates upward and stops at the
    first crossing below the target (later recoveries are noise, not capacity).  If every
    rate holds, the answer is the top rate as a lower bound; if even the lowest rate
    misses, the line from (0, 1.0) to the lowest point is used and marked "below".
    """
    pts = sorted((r, a) for r, a in points if a is not None)
    if not pts:
        return CapacityEstimate(None, "none")
    prev_r, prev_a = 0.0, 1.0
    for i, (r, a) in enumerate(pts):
        if a < target:
            if prev_a == a:
                x = prev_r
            else:
                x = prev_r + (r - prev_r) * (prev_a - target) / (prev_a - a)
            return CapacityEstimate(x, "interpolated" if i > 0 else "below")
        prev_r, prev_a = r, a
    return CapacityEstimate(pts[-1][0], "at_least")
