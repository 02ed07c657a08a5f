"""bucketserve-bench sim: the paper's comparisons on a simulated GPU cluster.

    bucketserve-bench sim --scenario paper [--quick] [--json] [--out DIR]
    bucketserve-bench sim --scenario cpu [--rates R1,R2,...]   # validation on this CPU (sim_validate.py)

Runs BucketServe, DistServe, UELLM, static batching and vLLM-style continuous batching
(core/sim) on 4 simulated A100 40 GB with a Llama-2-13B-shaped model, on Alpaca-like and
Mixed workloads: saturated throughput, SLO attainment against Poisson request rate, and
load capacity; then puts the paper's headline ratios beside ours.  With --json the last
stdout line is one JSON object whose key `comparisons` lists
{name, paper, ours, bucket, baseline}.  Every assumption is in docs/simulator.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bucket_scheduler.core.sim import ClusterSpec, PaperWorkload, default_config
from bucket_scheduler.core.sim.systems import splits

from . import report as rep
from . import sim_report, sim_sensitivity
from .sim_sweep import DISTSERVE_TARGET, KEEP_UP, TARGET, best_split, run_point, sweep

# (name, metric, workload, baseline, paper ratio): the paper's headline comparisons.
PAPER = [
    ("throughput_vs_uellm_mixed", "throughput", "mixed", "uellm", 3.58),
    ("slo_rate_vs_distserve_mixed", "slo_rate", "mixed", "distserve", 1.93),
    ("load_capacity_vs_uellm_alpaca", "load_capacity", "alpaca", "uellm", 1.975),
    # the paper's other figures for the same comparisons
    ("throughput_vs_distserve_mixed", "throughput", "mixed", "distserve", 1.31),
    ("slo_rate_vs_distserve_alpaca", "slo_rate", "alpaca", "distserve", 1.37),
    ("load_capacity_vs_uellm_mixed", "load_capacity", "mixed", "uellm", 3.47),
]
FULL = dict(num_requests=600, rate_factors="0.05,0.1,0.2,0.3,0.45,0.6,0.75,0.9,1.05,1.2,1.5,2", min_duration_s=40.0)
QUICK = dict(num_requests=60, rate_factors="0.1,0.4,0.8,1.5,3", min_duration_s=0.0)
BASELINES = ("distserve", "uellm", "static", "vllm")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bucketserve-bench sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=("paper", "cpu"), default="paper",
                   help="paper: the paper's comparisons; cpu: fit and validate the simulator on this machine's engine")
    p.add_argument("--quick", action="store_true", help="a small form (60 requests, 5 rates): seconds, for CI")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON line holding the comparisons")
    p.add_argument("--out", default="sim-results", help="output directory (default sim-results/)")
    p.add_argument("--workloads", default="alpaca,mixed")
    p.add_argument("--num-requests", type=int, default=None, help="requests per run (default 600; quick 60)")
    p.add_argument("--rate-factors", default=None, help="swept rates as multiples of vLLM's saturated request rate")
    p.add_argument("--min-duration", type=float, default=None,
                   help="a Poisson run sends at least rate x this many seconds of requests (default 40; quick 0)")
    p.add_argument("--mixed-long-share", type=float, default=0.2, help="share of LongBench requests in Mixed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--sensitivity", action="store_true",
                   help="also recompute the comparisons under one changed assumption at a time (sim_sensitivity.py; minutes)")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    args.num_requests = args.num_requests or base["num_requests"]
    args.rate_factors = args.rate_factors or base["rate_factors"]
    args.min_duration = base["min_duration_s"] if args.min_duration is None else args.min_duration
    return args


def run_workload(cluster: ClusterSpec, wl: PaperWorkload, factors: list[float], log, min_duration_s: float = 0.0) -> dict:
    """Every system on one workload: the DistServe split search first, BucketServe on its split."""
    basis = run_point(default_config("vllm"), cluster, wl, None)["throughput_rps"]
    rates = [round(f * basis, 4) for f in factors]
    log(f"[sim] {wl.name}: {wl.num_requests} requests, rates {rates} req/s (x vLLM's saturated {basis:.2f} req/s)")
    n, tried = best_split(default_config("distserve"), cluster, wl, rates, splits(cluster), min_duration_s)
    log(f"[sim] {wl.name}: DistServe pool search {sim_report.split_summary(tried)} -> {n} prefill + {cluster.num_gpus - n} decode")
    sweeps = {"bucketserve": sweep(default_config("bucketserve"), cluster, wl, rates, n, min_duration_s=min_duration_s),
              "distserve": tried[n]}
    for name in BASELINES[1:]:
        sweeps[name] = sweep(default_config(name), cluster, wl, rates, min_duration_s=min_duration_s)
    return {"rates": rates, "rate_basis_rps": basis, "num_prefill": n,
            "split_search": {k: {"rate_at_90": v.capacity(DISTSERVE_TARGET)["rate"],
                                 "offline_output_tokens_per_s": v.offline["output_tokens_per_s"]} for k, v in tried.items()},
            "systems": [s.as_report_system() for s in sweeps.values()]}


def figure(system: dict, metric: str) -> tuple[float | None, str]:
    if metric == "throughput":
        off = [r for r in system["runs"] if r["mode"] == "offline"]
        return (off[0]["output_tokens_per_s"] if off else None), "measured"
    cap = system["capacity"] if metric == "slo_rate" else system["load_capacity"]
    return cap["rate"], cap["bound"]


def comparisons(results: dict) -> list[dict]:
    out = []
    for name, metric, wl, base, paper in PAPER:
        if wl not in results:
            continue
        by = {s["name"]: s for s in results[wl]["systems"]}
        (b, b_bound), (o, o_bound) = figure(by["bucketserve"], metric), figure(by[base], metric)
        ours = b / o if b is not None and o else None
        out.append({"name": name, "paper": paper, "ours": None if ours is None else round(ours, 3),
                    "bucket": b, "baseline": o, "metric": metric, "workload": wl, "baseline_system": base,
                    "bounds": {"bucket": b_bound, "baseline": o_bound},
                    "within_25pct": ours is not None and abs(ours / paper - 1) <= 0.25})
    return out


def main(argv=None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--scenario", default="paper")
    known, rest = pre.parse_known_args(argv)
    if known.scenario == "cpu":
        from . import sim_validate  # imports the torch engine

        return sim_validate.main(rest)
    args = parse_args(argv)
    started = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    cluster = ClusterSpec()
    factors = [float(x) for x in args.rate_factors.split(",") if x.strip()]
    results = {}
    for name in [w.strip() for w in args.workloads.split(",") if w.strip()]:
        wl = PaperWorkload(name, args.num_requests, cluster.max_model_len, args.mixed_long_share, args.seed)
        results[name] = run_workload(cluster, wl, factors, log, args.min_duration)
        results[name]["workload"] = sim_report.describe_workload(wl)
    report = {
        "scenario": args.scenario, "quick": args.quick, "wall_s": round(time.time() - started, 1),
        "machine": rep.machine_info(), "setup": sim_report.describe_setup(cluster, args),
        "targets": {"slo_attainment": TARGET, "distserve_split_attainment": DISTSERVE_TARGET, "keep_up": KEEP_UP},
        "results": results, "comparisons": comparisons(results),
    }
    if args.sensitivity:
        light = max(60, args.num_requests // 2)
        report["sensitivity"] = {"num_requests": light, "min_duration_s": args.min_duration / 2, "rows": sim_sensitivity.run(
            cluster, results, light, args.seed, args.mixed_long_share, args.min_duration / 2, log)}
    pngs = [] if args.no_plots else sim_report.plots(report, out)
    report["plots"] = [str(p) for p in pngs]
    rep.write_json(out / "sim_results.json", report)
    md = sim_report.markdown(report)
    (out / "sim_report.md").write_text(md)
    log(md)
    log(f"[sim] wrote {out / 'sim_results.json'}, {out / 'sim_report.md'} and {len(pngs)} plots in {time.time() - started:.0f}s")
    if args.json:
        print(json.dumps({"scenario": args.scenario, "quick": args.quick, "comparisons": report["comparisons"],
                          "results": str(out / "sim_results.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
