"""The OpenAI-compatible API against Triton gRPC streaming, on ONE server and the same requests.

    python -m bucketserve_bench.api_compare --model bucketserve --num-requests 24 --rounds 2

Both paths hit the same running server (so they share its warm-up and the machine's state),
in alternating order round by round (gRPC first, then OpenAI first, ...), with the same prompt
texts for both within a round. Prints and writes: saturated throughput (all requests at t=0)
per path and their ratio, TTFT p50 at saturation, and unloaded TTFT p50 (one request at a time,
the two paths interleaved), i.e. what the front end adds to a request's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from dataclasses import asdict
from pathlib import Path

from .clients import OpenAICompletionsClient, TritonGrpcClient
from .metrics import RequestResult, percentile, summarize_run
from .runner import run_open_loop
from .workload import PromptBuilder, add_workload_args, build_workload, load_tokenizer, with_fresh_prompts, workload_spec


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="api_compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bucketserve", help="model of the repository (default bucketserve; bucketserve_tiny for a fast run)")
    p.add_argument("--model-dir", default=None, help="default: the model's own (SmolLM2 / tiny)")
    p.add_argument("--policy", default="bucket")
    p.add_argument("--rounds", type=int, default=2, help="saturated runs per path, alternating the order")
    p.add_argument("--unloaded", type=int, default=8, help="single requests per path for unloaded TTFT")
    add_workload_args(p)
    p.add_argument("--out", default="bench-results/api_compare.json")
    return p.parse_args(argv)


async def _one(client, req, timeout_s: float = 600.0) -> RequestResult:
    res = RequestResult(req.index, req.online, req.prompt_tokens, req.output_tokens, send_time=0.0)
    await client.send(req, res, timeout_s)
    return res


async def compare(args, handle, reqs, builder) -> dict:
    paths = {"grpc": TritonGrpcClient(handle.grpc_url, args.model),
             "openai": OpenAICompletionsClient(handle.openai_url, args.model, bucketserve_fields=True)}
    try:
        for client in paths.values():  # warm both paths (and the engine) before measuring
            for r in reqs[:2]:
                await _one(client, r)
        unloaded = {name: [] for name in paths}
        paired = []  # openai - grpc TTFT of the same request, sent back to back
        rng = random.Random(args.seed)
        for i in range(args.unloaded):
            req = rng.choice(reqs)
            order = list(paths) if i % 2 == 0 else list(reversed(paths))
            got = {}
            for name in order:
                res = await _one(paths[name], req)
                if res.ok and res.ttft_s is not None:
                    got[name] = res.ttft_s * 1000
                    unloaded[name].append(got[name])
            if len(got) == 2:
                paired.append(got["openai"] - got["grpc"])
        runs = []
        for rnd in range(args.rounds):
            round_reqs = with_fresh_prompts(reqs, builder, f"round-{rnd}")
            order = list(paths) if rnd % 2 == 0 else list(reversed(paths))
            for name in order:
                results = await run_open_loop(paths[name], round_reqs, [0.0] * len(round_reqs), 600.0)
                summary = summarize_run(name, "offline", None, results)
                runs.append({"round": rnd, **asdict(summary)})
                print(f"[api_compare] round {rnd} {name}: {summary.output_tokens_per_s:.1f} output tok/s, "
                      f"TTFT p50 {summary.ttft_ms['p50']:.0f} ms, {summary.completed}/{summary.num_requests} done", flush=True)
    finally:
        for client in paths.values():
            await client.close()
    out = {"runs": runs, "unloaded_ttft_ms": unloaded, "unloaded_ttft_paired_delta_ms": paired, "paths": {}}
    for name in paths:
        mine = [r for r in runs if r["system"] == name]
        tokens = sum(r["output_tokens_per_s"] * r["duration_s"] for r in mine)
        out["paths"][name] = {
            "output_tokens_per_s": tokens / sum(r["duration_s"] for r in mine),
            "saturated_ttft_p50_ms": percentile([r["ttft_ms"]["p50"] for r in mine], 50),
            "unloaded_ttft_p50_ms": percentile(unloaded[name], 50),
            "errors": sum(r["errors"] for r in mine),
        }
    g, o = out["paths"]["grpc"], out["paths"]["openai"]
    out["throughput_ratio_openai_over_grpc"] = o["output_tokens_per_s"] / g["output_tokens_per_s"]
    out["unloaded_ttft_p50_delta_ms"] = o["unloaded_ttft_p50_ms"] - g["unloaded_ttft_p50_ms"]
    out["unloaded_ttft_paired_delta_p50_ms"] = percentile(paired, 50)
    out["saturated_ttft_p50_delta_ms"] = o["saturated_ttft_p50_ms"] - g["saturated_ttft_p50_ms"]
    return out


def main(argv=None) -> int:
    from bucket_scheduler.runtime.models import resolve_model
    from bucket_scheduler.serving.launcher import ServerOptions, start_server

    args = parse_args(argv)
    model_dir = resolve_model(args.model_dir or ("tiny" if args.model == "bucketserve_tiny" else None))
    spec = workload_spec(args)
    builder = PromptBuilder(load_tokenizer(model_dir))
    reqs = build_workload(spec, builder.tokenizer, builder=builder)
    params = {"policy": args.policy, "model_dir": str(model_dir)}
    handle = start_server(ServerOptions(models=[args.model], overrides={args.model: params}, http_port=0, grpc_port=0,
                                        metrics_port=0, openai_port=0))
    try:
        out = asyncio.run(compare(args, handle, reqs, builder))
    finally:
        handle.stop()
    out["config"] = vars(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("| path | output tok/s (saturated) | TTFT p50 saturated (ms) | TTFT p50 unloaded (ms) | errors |")
    print("| --- | --- | --- | --- | --- |")
    for name, p in out["paths"].items():
        print(f"| {name} | {p['output_tokens_per_s']:.1f} | {p['saturated_ttft_p50_ms']:.0f} | {p['unloaded_ttft_p50_ms']:.1f} | {p['errors']} |")
    print(f"throughput openai / grpc = {out['throughput_ratio_openai_over_grpc']:.3f}; TTFT p50 openai - grpc: "
          f"unloaded {out['unloaded_ttft_p50_delta_ms']:+.1f} ms (median of same-request pairs "
          f"{out['unloaded_ttft_paired_delta_p50_ms']:+.1f} ms), saturated {out['saturated_ttft_p50_delta_ms']:+.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
