"""Sweeps on the simulated cluster: saturated throughput, SLO attainment against rate, load capacity.

Every simulated run is summarised exactly like a served run (metrics.summarize_run), and
the rate at 80% SLO attainment is interpolated by the serving benchmark's own
metrics.rate_at_attainment.  Load capacity (the paper does not define it) is the highest
arrival rate the system keeps up with: in each Poisson run, `keep_up` = requests
finished / requests arrived within the steady part of the arrival window (its last three
quarters, so neither the warm-up nor the drain tail counts); the capacity is where keep_up
falls under 0.9, interpolated the same way.  (The saturated run's request throughput is a
poor estimate: with a finite batch, its drain tail of long outputs at a small batch size
dominates.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from bucket_scheduler.core.sim import ClusterSpec, PaperWorkload, SystemConfig, build, simulate
from bucket_scheduler.core.sim.cluster import SimRun

from .metrics import RequestResult, rate_at_attainment, summarize_run

TARGET = 0.8  # the paper's SLO attainment level
DISTSERVE_TARGET = 0.9  # DistServe sizes its pools for goodput at 90% attainment
KEEP_UP = 0.9


def to_results(run: SimRun) -> list[RequestResult]:
    """Simulated records as the serving benchmark's per-request results."""
    out = []
    for rec in run.records:
        s = rec.spec
        done = rec.finish_s is not None
        out.append(RequestResult(
            index=s.index, online=s.online, prompt_tokens=s.prompt_len, expected_output_tokens=s.output_len,
            send_time=s.arrival_s, end_time=rec.finish_s if done else run.makespan_s,
            ttft_s=None if rec.first_token_s is None else rec.first_token_s - s.arrival_s,
            e2e_s=rec.finish_s - s.arrival_s if done else None, output_tokens=rec.generated,
            error=None if done else (rec.rejected or "not finished"),
            slo_ttft_ms=None if s.slo_ttft_s is None else s.slo_ttft_s * 1000,
            slo_tpot_ms=None if s.slo_tpot_s is None else s.slo_tpot_s * 1000,
        ))  # fmt: skip
    return out


def run_point(cfg: SystemConfig, cluster: ClusterSpec, workload: PaperWorkload, rate: float | None,
              num_prefill: int | None = None, min_duration_s: float = 0.0) -> dict:
    """One run: rate None = every request at t=0 without SLOs (saturated throughput).

    A Poisson run sends at least rate x min_duration_s requests (the workload's list,
    extended with the same seed): a short burst far above capacity can still meet a TPOT
    target, because the queueing before decode is spread over every output token."""
    if rate is not None and min_duration_s > 0:
        workload = replace(workload, num_requests=max(workload.num_requests, math.ceil(rate * min_duration_s)))
    run = simulate(build(cfg, cluster, num_prefill), workload.requests(rate, online=rate is not None))
    summary = asdict(summarize_run(cfg.name, "offline" if rate is None else "rate", rate, to_results(run)))
    pads = [(g["prefill_padding_efficiency"], g["busy_s"]) for g in run.gpus if g["prefill_padding_efficiency"] is not None]
    summary["padding_efficiency"] = min(p for p, _ in pads) if pads else None
    summary["gpu_utilization"] = round(sum(g["utilization"] for g in run.gpus) / len(run.gpus), 4)
    summary["preemptions"] = sum(g["preemptions"] for g in run.gpus)
    summary["keep_up"] = keep_up(run) if rate else None
    summary.pop("server_metrics", None)
    return summary


def keep_up(run: SimRun, warmup: float = 0.25) -> float:
    """Finished / arrived requests within [warmup x T, T], T the last arrival."""
    t_end = max(r.spec.arrival_s for r in run.records)
    t0 = warmup * t_end
    arrived = sum(t0 <= r.spec.arrival_s <= t_end for r in run.records)
    finished = sum(r.finish_s is not None and t0 <= r.finish_s <= t_end for r in run.records)
    return finished / arrived if arrived else 1.0


@dataclass
class SystemSweep:
    name: str
    num_prefill: int | None
    offline: dict | None = None
    runs: list[dict] = field(default_factory=list)

    def capacity(self, target: float = TARGET) -> dict:
        return asdict(rate_at_attainment([(r["rate"], r["slo_attainment"]) for r in self.runs], target))

    def load_capacity(self) -> dict:
        return asdict(rate_at_attainment([(r["rate"], r["keep_up"]) for r in self.runs], KEEP_UP))

    def as_report_system(self) -> dict:
        """The shape report.headline() / report.plots() read."""
        return {"name": self.name, "kind": "sim", "num_prefill": self.num_prefill,
                "runs": ([self.offline] if self.offline else []) + self.runs,
                "capacity": self.capacity(), "load_capacity": self.load_capacity()}


def sweep(cfg: SystemConfig, cluster: ClusterSpec, workload: PaperWorkload, rates: list[float],
          num_prefill: int | None = None, offline: bool = True, min_duration_s: float = 0.0) -> SystemSweep:
    s = SystemSweep(cfg.name, num_prefill)
    if offline:
        s.offline = run_point(cfg, cluster, workload, None, num_prefill)
    s.runs = [run_point(cfg, cluster, workload, r, num_prefill, min_duration_s) for r in rates]
    return s


def best_split(cfg: SystemConfig, cluster: ClusterSpec, workload: PaperWorkload, rates: list[float],
               candidates: list[int], min_duration_s: float = 0.0) -> tuple[int, dict[int, SystemSweep]]:
    """DistServe's placement search, reduced to pool sizes: the prefill pool size whose sweep
    holds the highest rate at 90% SLO attainment (goodput at DistServe's attainment level);
    ties go to the higher saturated throughput."""
    tried = {n: sweep(cfg, cluster, workload, rates, n, min_duration_s=min_duration_s) for n in candidates}

    def score(n):
        cap = tried[n].capacity(DISTSERVE_TARGET)["rate"] or 0.0
        return (round(cap, 9), tried[n].offline["output_tokens_per_s"] if tried[n].offline else 0.0)

    return max(candidates, key=score), tried
