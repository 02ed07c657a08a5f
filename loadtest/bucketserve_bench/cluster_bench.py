"""bucketserve-bench cluster: the Ray Serve cluster's routers and shapes, side by side in one run.

    python -m bucketserve_bench.cluster_bench --num-requests 24 --rates auto
    python -m bucketserve_bench.cluster_bench --quick    # routers only, 24 requests, 2 rates: a short run

Systems, each a fresh local Ray cluster driven through its OpenAI ingress with the same
workload (mixed lengths from both Azure traces) and the same rates:
- bucket-2x1: 2 replicas x 1 torch thread, bucket-aware routing (a length range per replica:
  the core's padding-optimal ranges, hand-over by queued work)
- bucket-tokens-2x1 (not run by default): the same with ranges of equal prompt-token share
- pow2-2x1:   2 replicas x 1 thread, Ray's power-of-two-choices router (the baseline)
- single-1x2: 1 replica x 2 threads (what the two replicas' cores give one server)
Prints the rate each holds at 80% SLO attainment and the saturated throughput, and the two
ratios of the goals: bucket / pow2 capacity, 2x1 / 1x2 throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import report as rep
from .bench import SloConfig, SweepConfig, run_all
from .clients import OpenAICompletionsClient
from .workload import PromptBuilder, add_workload_args, build_workload, load_tokenizer, summarize, workload_spec

# name -> (router, replicas, threads, range split)
SHAPES = {"bucket-2x1": ("bucket", 2, 1, "padding"), "pow2-2x1": ("pow2", 2, 1, "padding"),
          "single-1x2": ("pow2", 1, 2, "padding"), "bucket-tokens-2x1": ("bucket", 2, 1, "tokens")}
DEFAULT_SYSTEMS = "bucket-2x1,pow2-2x1,single-1x2"
# --quick: the two routers side by side on a short workload (each value only where the flag was left at its default)
QUICK = {"systems": "bucket-2x1,pow2-2x1", "num_requests": 24, "rates": "0.6,1.2", "ttft_scale": 3.0, "tpot_scale": 3.0,
         "drain": 30.0}


@dataclass
class ClusterSystem:
    name: str
    router: str
    replicas: int
    threads: int
    model: str
    params: dict = field(default_factory=dict)
    max_len: int = 2048
    imbalance: float = 1
    split: str = "padding"
    handle: object = None

    @property
    def metrics_url(self) -> str | None:
        return None  # several servers: the bench reads client-side figures only

    def start(self, log=print) -> None:
        from bucket_scheduler.cluster.app import ClusterSettings, start_local
        from bucket_scheduler.serving.launcher import free_port

        settings = ClusterSettings(replicas=self.replicas, router=self.router, models=[self.model], threads=self.threads,
                                   params={self.model: dict(self.params)}, max_len=self.max_len, imbalance=self.imbalance, split=self.split,
                                   replica_cpus=round(1.8 / self.replicas, 2))
        self.handle = start_local(settings, port=free_port(), num_cpus=2, log=log)

    def client(self) -> OpenAICompletionsClient:
        return OpenAICompletionsClient(self.handle.url, self.model, bucketserve_fields=True)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()
            self.handle = None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bucketserve-bench-cluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=DEFAULT_SYSTEMS, help=f"any of {', '.join(SHAPES)}")
    p.add_argument("--quick", action="store_true", help="short run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--model", default="bucketserve")
    p.add_argument("--model-dir", default=None, help="'tiny', 'smollm2' or a local model directory (default: the model's own)")
    add_workload_args(p, online_fraction=1.0)
    p.add_argument("--rates", default="auto")
    p.add_argument("--rate-factors", default="0.5,1.0,1.5")
    p.add_argument("--ttft-scale", type=float, default=5.0)
    p.add_argument("--tpot-scale", type=float, default=5.0)
    p.add_argument("--drain", type=float, default=60.0)
    p.add_argument("--imbalance", type=float, default=1, help="bucket router: queued-work lead (typical prompts) before hand-over")
    p.add_argument("--server-param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="bench-results/cluster")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args


def main(argv=None) -> int:
    from bucket_scheduler.runtime.models import resolve_model

    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model_dir = Path(resolve_model(args.model_dir))
    spec = workload_spec(args)
    shaping = spec.shaping
    prompts = PromptBuilder(load_tokenizer(model_dir))
    reqs = build_workload(spec, prompts.tokenizer, builder=prompts)
    params = dict(kv.split("=", 1) for kv in args.server_param)
    if args.model_dir:
        params.setdefault("model_dir", str(model_dir))
    systems = []
    for name in [s.strip() for s in args.systems.split(",") if s.strip()]:
        router, replicas, threads, split = SHAPES[name]
        systems.append((ClusterSystem(name, router, replicas, threads, args.model, params, imbalance=args.imbalance, split=split),
                        "bucketserve"))
    rates = [] if args.rates == "auto" else [float(x) for x in args.rates.split(",")]
    cfg = SweepConfig(rates=rates, offline=True, seed=args.seed, drain_s=args.drain, warmup_requests=2,
                      auto_rate_factors=[float(x) for x in args.rate_factors.split(",")], prompts=prompts)
    slo = SloConfig(None, None, args.ttft_scale, args.tpot_scale, 4)
    results, slo_box = asyncio.run(run_all(systems, reqs, cfg, slo))
    systems_out = [{k: v for k, v in asdict(r).items() if k != "results"} for r in results]
    head = rep.headline(systems_out)
    ratios = goal_ratios(head)
    report = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "wall_s": time.time() - started,
              "machine": rep.machine_info(), "config": vars(args), "rates": cfg.rates, "slo": slo_box,
              "workload": {"shaping": shaping.describe(), "summary": summarize(reqs)}, "systems": systems_out,
              "headline": head, "goal_ratios": ratios}
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({"headline": head, "goal_ratios": ratios, "rates": cfg.rates, "slo": slo_box}, indent=1, default=str))
    return 0


def goal_ratios(head: dict) -> dict:
    def get(name, key):
        v = (head.get(name) or {}).get(key)
        return v if isinstance(v, (int, float)) and v > 0 else None

    out = {}
    b, p = get("bucket-2x1", "rate_at_slo"), get("pow2-2x1", "rate_at_slo")
    out["bucket_over_pow2_rate_at_80"] = b / p if b and p else None
    bt = get("bucket-tokens-2x1", "rate_at_slo")
    if bt:
        out["bucket_tokens_over_pow2_rate_at_80"] = bt / p if p else None
    t2, t1 = get("pow2-2x1", "offline_total_tokens_per_s"), get("single-1x2", "offline_total_tokens_per_s")
    out["two_by_one_over_one_by_two_throughput"] = t2 / t1 if t2 and t1 else None
    tb = get("bucket-2x1", "offline_total_tokens_per_s")
    out["bucket_2x1_over_one_by_two_throughput"] = tb / t1 if tb and t1 else None
    return out


if __name__ == "__main__":
    sys.exit(main())
