"""bucketserve-bench: every benchmark of BucketServe, one subcommand each (docs/benchmarks.md).

    bucketserve-bench sweep --quick                    # serving sweep: smoke test, tiny model, < 2 minutes
    bucketserve-bench sweep --rates 0.25,0.5,1,2 --vllm   # full comparison (a bare `bucketserve-bench ...` is `sweep`)
    bucketserve-bench engine [--raw] [--set KEY=VALUE]  # the torch engine in-process: trace replay or raw speed
    bucketserve-bench scheduler                        # decision time of one schedule() call
    bucketserve-bench step                             # the model step: transformers' forward vs the lean step
    bucketserve-bench sim --scenario paper --json      # the paper's comparisons, simulated (docs/simulator.md)

Each takes --quick (a short smoke run) and --json (one JSON object on the last line of stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from . import report as rep
from .bench import SloConfig, SweepConfig, run_all
from .checks import sanity_problems
from .systems import POLICIES, OurServer, SystemUnavailable, VllmServer, vllm_version
from .workload import DEFAULT_TRACES, PromptBuilder, add_workload_args, build_workload, load_tokenizer, summarize, to_dict, workload_spec

# Smoke mode: the tiny random model, two policies (so the per-policy restart is exercised),
# a saturated run of 12 short requests each and a two-rate sweep derived from the first one.
QUICK = dict(
    model="bucketserve_tiny", model_dir="tiny", policies="bucket,static", rates="auto", rate_factors="0.3,1", num_requests=12,
    max_prompt=64, max_output=12, prompt_scale=0.05, output_scale=0.1, calibration_requests=3, warmup_requests=2,
)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bucketserve-bench sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("workload")
    add_workload_args(g)
    g = p.add_argument_group("systems")
    g.add_argument("--policies", default=",".join(POLICIES), help="our server's policies to run, comma-separated (empty: none)")
    g.add_argument("--model", default="bucketserve", help="model name in the repository (default bucketserve)")
    g.add_argument("--model-dir", default=None, help="Hugging Face model directory (or 'smollm2' / 'tiny'); default: the model's default (SmolLM2-135M)")
    g.add_argument("--max-model-len", type=int, default=2048)
    g.add_argument("--server-param", action="append", default=[], metavar="KEY=VALUE", help="extra config.pbtxt parameter for our server (repeatable)")
    g.add_argument("--variant-param", action="append", default=[], metavar="LABEL:KEY=VALUE",
                   help="a parameter for one labelled system of --policies (POLICY:LABEL runs POLICY again under "
                        "LABEL), e.g. --policies bucket,bucket:nochunk --variant-param nochunk:scheduler.chunked_prefill=false")
    g.add_argument("--api", choices=("grpc", "openai", "both"), default="grpc",
                   help="how the bench talks to our server: Triton gRPC streaming, the OpenAI-compatible API (the "
                        "client vLLM gets), or both (each policy twice; the OpenAI runs are named POLICY-openai)")
    g.add_argument("--vllm", action="store_true", help="also run vLLM on CPU (skipped with a message if its venv is absent)")
    g.add_argument("--vllm-python", default=".venv-vllm/bin/python")
    g.add_argument("--vllm-kv-gib", type=float, default=2.0, help="VLLM_CPU_KVCACHE_SPACE (GiB)")
    g = p.add_argument_group("load and SLOs")
    g.add_argument("--rates", default="auto", help="request rates to sweep (req/s, comma-separated), or 'auto': "
                   "the first system's saturated throughput times --rate-factors (default)")
    g.add_argument("--rate-factors", default="0.4,0.8,1.2,1.6", help="for --rates auto")
    g.add_argument("--no-offline", action="store_true", help="skip the saturated run (all requests at t=0)")
    g.add_argument("--slo-ttft-ms", type=float, default=None, help="fixed TTFT target; default: scaled from the unloaded latency")
    g.add_argument("--slo-tpot-ms", type=float, default=None)
    g.add_argument("--ttft-scale", type=float, default=5.0, help="TTFT SLO = this x unloaded TTFT p90 (default 5)")
    g.add_argument("--tpot-scale", type=float, default=5.0, help="TPOT SLO = this x unloaded TPOT p50 (default 5)")
    g.add_argument("--calibration-requests", type=int, default=8)
    g.add_argument("--request-timeout", type=float, default=600.0)
    g.add_argument("--warmup-requests", type=int, default=4, help="sent one by one, then together, after each start")
    g.add_argument("--drain", type=float, default=60.0, help="a run ends this many seconds after its last arrival; what is left is cancelled and counted as missed")
    g = p.add_argument_group("output")
    g.add_argument("--out", default="bench-results", help="output directory (default bench-results/)")
    g.add_argument("--quick", action="store_true", help="smoke mode: tiny model, short sweep, sanity checks (< 2 minutes)")
    g.add_argument("--json", action="store_true", help="the report as one JSON line, the last line of stdout (the rest to stderr)")
    args = p.parse_args(argv)
    if args.quick:
        defaults = p.parse_args([])
        for k, v in QUICK.items():
            if getattr(args, k) == getattr(defaults, k):  # flags given explicitly still win
                setattr(args, k, v)
    return args


def resolve_model_dir(setting: str | None) -> Path:
    from bucket_scheduler.runtime.models import resolve_model

    return Path(resolve_model(setting))


def _interrupt(signum, _frame):
    raise KeyboardInterrupt  # unwinds through the finally blocks that stop the servers


# Subcommands; no subcommand (flags only) is `sweep`, so older command lines keep working.
SUBCOMMANDS = {"sweep": "bucketserve_bench.cli", "engine": "bucketserve_bench.engine_bench",
               "scheduler": "bucketserve_bench.scheduler_bench", "step": "bucketserve_bench.step_bench",
               "sim": "bucketserve_bench.sim"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS and argv[0] != "sweep":
        import importlib

        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    return sweep(argv[1:] if argv and argv[0] == "sweep" else argv)


def sweep(argv) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    traces = args.trace or list(DEFAULT_TRACES)
    for t in traces:
        if not Path(t).is_file():
            print(f"trace not found: {t} (pass --trace PATH; run from the repository root for the default)", file=sys.stderr)
            return 2
    rates = [] if args.rates.strip() == "auto" else [float(x) for x in args.rates.split(",") if x.strip()]
    factors = [float(x) for x in args.rate_factors.split(",") if x.strip()]
    policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    unknown = [p for p in policies if p.split(":")[0] not in POLICIES]
    if unknown:
        print(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}", file=sys.stderr)
        return 2

    model_dir = resolve_model_dir(args.model_dir)
    spec = workload_spec(args)
    shaping = spec.shaping
    prompts = PromptBuilder(load_tokenizer(model_dir))
    reqs = build_workload(spec, prompts.tokenizer, builder=prompts)
    overrides = dict(kv.split("=", 1) for kv in args.server_param)
    overrides.setdefault("max_model_len", str(args.max_model_len))
    variant: dict[str, dict[str, str]] = {}
    for item in args.variant_param:
        label, sep, kv = item.partition(":")
        key, eq, value = kv.partition("=")
        if not (sep and eq):
            print(f"--variant-param {item!r}: expected LABEL:KEY=VALUE", file=sys.stderr)
            return 2
        variant.setdefault(label, {})[key] = value

    apis = ["grpc", "openai"] if args.api == "both" else [args.api]
    from bucket_scheduler.runtime.api import EngineConfig

    # Fair to static: the same max batch as every other system (max_num_seqs) unless a variant says otherwise.
    same_batch = {"static": {"scheduler.max_batch_size": overrides.get("max_num_seqs", str(EngineConfig().max_num_seqs))}}
    systems = [(OurServer(p.split(":")[0], model=args.model, model_dir=str(model_dir),
                          overrides={**overrides, **same_batch.get(p.split(":")[0], {}), **variant.get(p.partition(":")[2], {})},
                          log_dir=out / "logs", api=api,
                          name=p if api == "grpc" else f"{p}-openai"), "bucketserve")
               for p in policies for api in apis]
    skipped = []
    if args.vllm:
        vllm = VllmServer(str(model_dir), python=Path(args.vllm_python), max_model_len=args.max_model_len, kv_cache_gib=args.vllm_kv_gib, log_dir=out / "logs")
        try:
            vllm.check()
            systems.append((vllm, "vllm"))
        except SystemUnavailable as exc:
            print(f"[bench] skipping vLLM: {exc}", file=sys.stderr)
            skipped.append({"name": "vllm", "kind": "vllm", "skipped": str(exc), "runs": []})

    cfg = SweepConfig(rates=rates, offline=not args.no_offline, seed=args.seed, request_timeout_s=args.request_timeout,
                      warmup_requests=args.warmup_requests, drain_s=args.drain, auto_rate_factors=factors,
                      prompts=prompts)
    slo = SloConfig(args.slo_ttft_ms, args.slo_tpot_ms, args.ttft_scale, args.tpot_scale, args.calibration_requests)
    results, slo_box = asyncio.run(run_all(systems, reqs, cfg, slo))

    systems_out = [{k: v for k, v in asdict(r).items() if k != "results"} for r in results] + skipped
    if slo.ttft_ms is None or slo.tpot_ms is None:
        slo_box["how"] = (f"TTFT = {slo.ttft_scale:g} x unloaded TTFT p90, TPOT = {slo.tpot_scale:g} x unloaded TPOT p50, "
                          f"measured one request at a time on '{slo_box.get('calibrated_on')}' before its sweep")
    head = rep.headline(systems_out)
    report = {
        "started_utc": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": time.time() - started,
        "machine": rep.machine_info(),
        "config": {**{k: v for k, v in vars(args).items()}, "rates": cfg.rates, "rates_derived_from": cfg.auto_rate_basis,
                   "policies": policies, "model_dir": str(model_dir), "target_attainment": cfg.target_attainment},
        "workload": {"traces": traces, "seed": args.seed, "shaping": shaping.describe(), "online_fraction": args.online_fraction,
                     "summary": summarize(reqs), "requests": [to_dict(r) for r in reqs]},
        "slo": slo_box,
        "systems": systems_out,
        "headline": head,
        "ratios": rep.ratios(head),
    }
    if any(kind == "vllm" for _, kind in systems):
        report["machine"]["vllm"] = vllm_version(Path(args.vllm_python))
    rep.write_json(out / "results.json", report)
    (out / "per_request.json").write_text(json.dumps({r.name: r.results for r in results}))
    md = rep.markdown(report)
    (out / "report.md").write_text(md)
    pngs = rep.plots(report, out)
    text = sys.stderr if args.json else sys.stdout
    print(md, file=text)
    print(f"[bench] wrote {out / 'results.json'}, {out / 'report.md'}, {', '.join(str(p) for p in pngs)} in {time.time() - started:.0f}s", file=text)
    if args.quick:
        problems = sanity_problems(report, {r.name: r.results for r in results}, pngs)
        if problems:
            print("[bench] quick-mode sanity checks FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        print("[bench] quick-mode sanity checks passed", file=text)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "workload"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
