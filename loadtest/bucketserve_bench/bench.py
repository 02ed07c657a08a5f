"""The benchmark: one workload, every system, a rate sweep and a saturated run each."""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import asdict, dataclass, field

from tqdm import tqdm

from . import scrape
from .metrics import RequestResult, RunSummary, percentile, rate_at_attainment, summarize_run
from .runner import run_open_loop, run_sequential
from .workload import BenchRequest, PromptBuilder, apply_slo, poisson_offsets, with_fresh_prompts

# Gauges sampled while a run is in flight; the report gives their mean over the samples.
SAMPLED_GAUGES = ("bucketserve_padding_efficiency", "bucketserve_batch_size", "bucketserve_buckets", "bucketserve_queue_requests")


@dataclass
class SloConfig:
    ttft_ms: float | None = None  # fixed thresholds; None: scale from the calibration
    tpot_ms: float | None = None
    ttft_scale: float = 5.0  # x the unloaded TTFT p90 of the calibration requests
    tpot_scale: float = 5.0  # x the unloaded TPOT p50
    calibration_requests: int = 8


@dataclass
class SweepConfig:
    rates: list[float]
    offline: bool = True  # also run every request at t=0 (saturated throughput)
    seed: int = 0
    request_timeout_s: float = 600.0
    metrics_poll_s: float = 0.5
    warmup_requests: int = 4
    drain_s: float | None = 180.0  # a run ends this long after its last arrival; the rest is cancelled
    settle_timeout_s: float = 60.0  # wait for the server to be idle between runs
    target_attainment: float = 0.8
    # With no rates given: the first system's saturated throughput (req/s) times these.
    auto_rate_factors: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0, 1.25])
    auto_rate_basis: dict | None = None  # filled in when the rates were derived
    prompts: PromptBuilder | None = None  # set: every run gets fresh prompt texts (same for all systems)


@dataclass
class SystemResult:
    name: str
    kind: str  # "bucketserve" | "vllm"
    startup_s: float | None = None
    runs: list[dict] = field(default_factory=list)
    skipped: str | None = None
    capacity: dict | None = None  # rate held at the target attainment (online requests' SLOs)
    capacity_all: dict | None = None  # the same over every request (offline ones count when they finish)
    results: dict = field(default_factory=dict, repr=False)  # run label -> per-request records


async def _poll_gauges(url: str, every_s: float, samples: dict[str, list[float]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            values = await asyncio.to_thread(scrape.scrape, url)
            for name in SAMPLED_GAUGES:
                if name in values:
                    samples.setdefault(name, []).append(values[name])
        except OSError:
            pass
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except asyncio.TimeoutError:
            pass


def for_run(reqs: list[BenchRequest], cfg: SweepConfig, label: str) -> list[BenchRequest]:
    return with_fresh_prompts(reqs, cfg.prompts, f"{cfg.seed}-{label}") if cfg.prompts is not None else reqs


async def measure(system, client, reqs: list[BenchRequest], offsets: list[float], mode: str, rate: float | None, cfg: SweepConfig, bar) -> tuple[RunSummary, list[RequestResult]]:
    """One run against a started system, with its metrics scraped around it."""
    reqs = for_run(reqs, cfg, f"rate={rate:g}" if rate is not None else mode)
    url = system.metrics_url
    if url:  # the previous run's (or the warm-up's) last counters must not land in this one
        await settle(url, cfg.settle_timeout_s)
    before = await asyncio.to_thread(scrape.scrape, url) if url else {}
    samples: dict[str, list[float]] = {}
    stop = asyncio.Event()
    poller = asyncio.create_task(_poll_gauges(url, cfg.metrics_poll_s, samples, stop)) if url else None
    try:
        results = await run_open_loop(client, reqs, offsets, cfg.request_timeout_s, on_done=lambda _r: bar.update(1), drain_s=cfg.drain_s)
    finally:
        stop.set()
        if poller is not None:
            await poller
    summary = summarize_run(system.name, mode, rate, results)
    if url:
        settled = await settle(url, cfg.settle_timeout_s)
        after = await asyncio.to_thread(scrape.scrape, url)
        counters = {k: v for k, v in scrape.delta(before, after).items() if k.split("{")[0].endswith("_total")}
        gauges = {k: sum(v) / len(v) for k, v in samples.items() if v}
        summary.server_metrics = {"counters": counters, "gauge_means": gauges, "settled": settled}
        summary.padding_efficiency = run_padding_efficiency(before, after)
    return summary, results


def run_padding_efficiency(before: dict, after: dict) -> float | None:
    """This run's prefill padding efficiency (useful / computed token slots).

    The server exports the ratio since its start (a gauge) and the prompt tokens answered
    (a counter); computed slots since start = prompt tokens / ratio, so the run's share is
    the difference of the two scrapes.  Exact when no request was preempted and recomputed."""
    key_e, key_u = "bucketserve_padding_efficiency", "bucketserve_prompt_tokens_total"
    if key_e not in after or key_u not in after or not after[key_e]:
        return None
    u0, u1 = before.get(key_u, 0.0), after[key_u]
    e0 = before.get(key_e) or 1.0
    slots = u1 / after[key_e] - (u0 / e0 if u0 else 0.0)
    if u1 - u0 <= 0 or slots <= 0:
        return None
    return min(1.0, (u1 - u0) / slots)


async def settle(url: str, timeout_s: float) -> bool:
    """Wait until the server holds no request (cancelled stragglers of a cut-off run)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            values = await asyncio.to_thread(scrape.scrape, url)
        except OSError:
            return False
        if values.get("bucketserve_inflight_requests", 0) == 0 and values.get("bucketserve_queue_requests", 0) == 0:
            return True
        await asyncio.sleep(0.5)
    return False


async def calibrate(client, reqs: list[BenchRequest], slo: SloConfig, timeout_s: float) -> dict:
    """Unloaded latency, one request at a time: what the SLO thresholds are multiples of."""
    cal = reqs[: slo.calibration_requests]
    results = await run_sequential(client, cal, timeout_s)
    bad = [r for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"calibration request failed: {bad[0].error}")
    ttft = [r.ttft_s * 1000 for r in results if r.ttft_s is not None]
    tpot = [r.tpot_s * 1000 for r in results if r.tpot_s is not None and r.output_tokens > 1]
    out = {
        "requests": len(results),
        "ttft_ms_p50": percentile(ttft, 50),
        "ttft_ms_p90": percentile(ttft, 90),
        "tpot_ms_p50": percentile(tpot, 50),
        "tpot_ms_p90": percentile(tpot, 90),
    }
    out["slo_ttft_ms"] = slo.ttft_ms if slo.ttft_ms is not None else slo.ttft_scale * out["ttft_ms_p90"]
    out["slo_tpot_ms"] = slo.tpot_ms if slo.tpot_ms is not None else slo.tpot_scale * out["tpot_ms_p50"]
    return out


def _record(res: RequestResult) -> dict:
    d = asdict(res)
    d.pop("token_times")
    d["tpot_s"] = res.tpot_s
    d["meets_slo"] = res.meets_slo
    return d


async def run_system(system, kind: str, reqs: list[BenchRequest], cfg: SweepConfig, slo_box: dict, slo: SloConfig, bar, log) -> SystemResult:
    out = SystemResult(system.name, kind)
    t0 = time.monotonic()
    await asyncio.to_thread(system.start, log)
    out.startup_s = time.monotonic() - t0
    client = system.client()
    try:
        if cfg.warmup_requests:
            # One at a time, then all at once: first-use costs (kernel selection for new
            # shapes, allocator growth) are paid before anything is measured.
            warm = for_run(reqs[: cfg.warmup_requests], cfg, "warmup")
            done = await run_sequential(client, warm, cfg.request_timeout_s)
            done += await run_open_loop(client, warm, [0.0] * len(warm), cfg.request_timeout_s)
            failed = [r for r in done if not r.ok]
            if failed:
                raise RuntimeError(f"{system.name}: warm-up request failed: {failed[0].error}")
        if "slo_ttft_ms" not in slo_box:  # the first system started sets the thresholds for all
            slo_box.update(await calibrate(client, for_run(reqs, cfg, "calibration"), slo, cfg.request_timeout_s))
            slo_box["calibrated_on"] = system.name
            apply_slo(reqs, slo_box["slo_ttft_ms"], slo_box["slo_tpot_ms"])

        async def saturated() -> RunSummary:
            bar.set_description(f"{system.name} offline")
            summary, results = await measure(system, client, reqs, [0.0] * len(reqs), "offline", None, cfg, bar)
            out.runs.append(asdict(summary))
            out.results["offline"] = [_record(r) for r in results]
            return summary

        offline_done = False
        if not cfg.rates:  # derive the sweep from this (the first) system's saturated throughput
            sat = await saturated()
            offline_done = True
            cfg.rates[:] = [round(f * sat.throughput_rps, 3) for f in cfg.auto_rate_factors]
            cfg.auto_rate_basis = {"system": system.name, "saturated_rps": sat.throughput_rps, "factors": list(cfg.auto_rate_factors)}
            log(f"[bench] sweep rates {cfg.rates} req/s = {cfg.auto_rate_factors} x {system.name}'s saturated {sat.throughput_rps:.3f} req/s")
        for rate in cfg.rates:
            bar.set_description(f"{system.name} @ {rate:g} req/s")
            summary, results = await measure(system, client, reqs, poisson_offsets(len(reqs), rate, cfg.seed), "rate", rate, cfg, bar)
            out.runs.append(asdict(summary))
            out.results[f"rate={rate:g}"] = [_record(r) for r in results]
        if cfg.offline and not offline_done:
            await saturated()
    finally:
        await client.close()
        await asyncio.to_thread(system.stop)
    cap = rate_at_attainment([(r["rate"], r["slo_attainment"]) for r in out.runs if r["mode"] == "rate"], cfg.target_attainment)
    out.capacity = asdict(cap)
    out.capacity_all = asdict(rate_at_attainment([(r["rate"], r["slo_attainment_all"]) for r in out.runs if r["mode"] == "rate"],
                                                 cfg.target_attainment))
    return out


async def run_all(systems: list[tuple[object, str]], reqs: list[BenchRequest], cfg: SweepConfig, slo: SloConfig, log=print) -> tuple[list[SystemResult], dict]:
    slo_box: dict = {}
    if slo.ttft_ms is not None and slo.tpot_ms is not None:
        slo_box.update(slo_ttft_ms=slo.ttft_ms, slo_tpot_ms=slo.tpot_ms, calibrated_on=None)
        apply_slo(reqs, slo.ttft_ms, slo.tpot_ms)
    n_rates = len(cfg.rates) or len(cfg.auto_rate_factors)
    per_system = len(reqs) * (n_rates + (1 if cfg.offline or not cfg.rates else 0))
    results = []
    with tqdm(total=per_system * len(systems), unit="req", dynamic_ncols=True) as bar:
        for system, kind in systems:
            done_before = bar.n
            try:
                results.append(await run_system(system, kind, reqs, cfg, slo_box, slo, bar, log=lambda m: bar.write(str(m), file=sys.stderr)))
            except Exception as exc:
                bar.write(f"[bench] {system.name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                results.append(SystemResult(system.name, kind, skipped=f"failed: {type(exc).__name__}: {exc}"))
                bar.update(max(0, done_before + per_system - bar.n))
    return results, slo_box
