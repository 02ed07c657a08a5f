"""Where does the engine's time go?  Runs the benchmark workload saturated (all requests at
t=0) through the engine in-process, one policy at a time, with timers around the phases of
an engine step, and prints the split with the runner's own counters.

    python -m bucketserve_bench.profile --policies bucket,static --num-requests 40

No Triton here: this isolates scheduling and model time from transport and streaming.
The timers wrap the engine's own objects (runner.prefill / runner.decode / scheduler.schedule
/ engine._postprocess); nothing is replaced.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .workload import DEFAULT_TRACES, LengthShaping, WorkloadSpec, build_workload, load_tokenizer


@dataclass
class PhaseTimes:
    seconds: dict = field(default_factory=lambda: defaultdict(float))
    calls: dict = field(default_factory=lambda: defaultdict(int))
    rows: dict = field(default_factory=lambda: defaultdict(int))  # batch rows summed over calls

    def wrap(self, obj, attr: str, phase: str, rows_of=None) -> None:
        inner = getattr(obj, attr)

        def timed(*args, **kwargs):
            n = rows_of(args) if rows_of else 0
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - t0
                self.calls[phase] += 1
                self.rows[phase] += n

        setattr(obj, attr, timed)


def profile_policy(policy: str, reqs, model_dir: str, max_model_len: int, threads: int) -> dict:
    from bucket_scheduler.runtime.api import EngineConfig, GenerationRequest, SamplingParams
    from bucket_scheduler.runtime.engine import Engine

    engine = Engine(EngineConfig(model_dir=model_dir, policy=policy, max_model_len=max_model_len, threads=threads))
    times = PhaseTimes()
    times.wrap(engine.runner, "prefill", "prefill (model)", rows_of=lambda a: len(a[0]))
    times.wrap(engine.runner, "prefill_chunk", "prefill chunks (model)", rows_of=lambda a: a[2] - a[1])
    times.wrap(engine.runner, "step", "one-pass steps (model)", rows_of=lambda a: len(a[0]))
    times.wrap(engine.runner, "decode", "decode (model)", rows_of=lambda a: engine.runner.num_rows)
    times.wrap(engine.scheduler, "schedule", "schedule (policy)")
    times.wrap(engine, "_postprocess", "postprocess (detokenize, emit)", rows_of=lambda a: len(a[0]))
    done = threading.Event()
    remaining = [len(reqs)]
    lock = threading.Lock()

    def on_output(out):
        if out.finished:
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

    engine.start()
    t0 = time.perf_counter()
    for r in reqs:
        sp = SamplingParams(max_tokens=r.output_tokens, min_tokens=r.output_tokens, ignore_eos=True, temperature=0.0)
        engine.submit(GenerationRequest(f"p{r.index}", r.prompt, sp, stream=True, req_class="online" if r.online else "offline",
                                        slo_ttft_ms=r.slo_ttft_ms, slo_tpot_ms=r.slo_tpot_ms), on_output)
    done.wait()
    wall = time.perf_counter() - t0
    stats = engine.stats()
    engine.shutdown()
    phases = dict(times.seconds)
    accounted = sum(phases.values())
    out_tokens = sum(r.output_tokens for r in reqs)
    return {
        "policy": policy,
        "wall_s": wall,
        "output_tokens_per_s": out_tokens / wall,
        "phases_s": phases,
        "other_s": wall - accounted,  # engine loop, locks, waiting for work, tokenising on submit
        "prefill_calls": times.calls["prefill (model)"],
        "mean_prefill_batch": times.rows["prefill (model)"] / max(1, times.calls["prefill (model)"]),
        "prefill_chunks": times.calls["prefill chunks (model)"],
        "one_pass_steps": times.calls["one-pass steps (model)"],  # chunks and decode in one forward
        "mean_chunk_tokens": times.rows["prefill chunks (model)"] / max(1, times.calls["prefill chunks (model)"]),
        "decode_steps": times.calls["decode (model)"],
        "mean_decode_batch": times.rows["decode (model)"] / max(1, times.calls["decode (model)"]),
        "prefill_padding_efficiency": stats.prefill_padding_efficiency,
        "decode_kv_efficiency": stats.decode_kv_efficiency,
        "prefill_tokens": stats.prefill_tokens,
        "decode_tokens": stats.decode_tokens,
        "preemptions": stats.counters.preemptions,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bucketserve_bench.profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", default="bucket,static,continuous,uellm")
    p.add_argument("--model-dir", default=None)
    p.add_argument("--trace", action="append")
    p.add_argument("--num-requests", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-scale", type=float, default=0.25)
    p.add_argument("--output-scale", type=float, default=0.25)
    p.add_argument("--max-prompt", type=int, default=512)
    p.add_argument("--max-output", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    from bucket_scheduler.runtime.models import resolve_model

    model_dir = str(resolve_model(args.model_dir))
    spec = WorkloadSpec(traces=args.trace or list(DEFAULT_TRACES), num_requests=args.num_requests, seed=args.seed,
                        shaping=LengthShaping(args.prompt_scale, args.output_scale, max_prompt=args.max_prompt, max_output=args.max_output))
    reqs = build_workload(spec, load_tokenizer(model_dir))
    results = []
    for policy in [x for x in args.policies.split(",") if x]:
        r = profile_policy(policy, reqs, model_dir, args.max_model_len, args.threads)
        results.append(r)
        print(f"\n== {policy}: {r['wall_s']:.1f}s wall, {r['output_tokens_per_s']:.1f} output tok/s")
        for phase, s in sorted(r["phases_s"].items(), key=lambda kv: -kv[1]):
            print(f"  {phase:32s} {s:8.2f}s  {100 * s / r['wall_s']:5.1f}%")
        print(f"  {'other (loop, locks, idle)':32s} {r['other_s']:8.2f}s  {100 * r['other_s'] / r['wall_s']:5.1f}%")
        print(f"  prefill: {r['prefill_calls']} calls, mean batch {r['mean_prefill_batch']:.1f}, padding efficiency {r['prefill_padding_efficiency']:.2f}")
        print(f"  prefill chunks: {r['prefill_chunks']} calls, mean {r['mean_chunk_tokens']:.0f} tokens; "
              f"one-pass steps (chunks and decode in one forward): {r['one_pass_steps']}")
        print(f"  decode: {r['decode_steps']} steps, mean batch {r['mean_decode_batch']:.1f}, KV efficiency {r['decode_kv_efficiency']:.2f}; preemptions {r['preemptions']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
