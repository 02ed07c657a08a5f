"""bucketserve-bench step: the model step side by side: transformers' forward ("hf") against the lean step
("lean", runtime/fast_step.py); "lean-mm" is the lean step with runtime/attention.py's
matmul-softmax-matmul decode attention instead of one SDPA kernel.

Each variant gets its own copy of the model (prepacked bf16 linears, as the engine loads
it) and its own Runner holding the same prompts. Rounds alternate the variants (A, B, A,
B, ...) so a busy machine slows them alike; the figures are medians over the rounds.

  bucketserve-bench step                      # SmolLM2, bf16, 2 threads, 1 and 32 rows
  bucketserve-bench step --threads 1 --variants hf,lean,lean-mm --rows 32
  bucketserve-bench step --quick --json       # tiny model, seconds; one JSON line last
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time


def build(variant: str, path, dtype, args):
    import torch

    from bucket_scheduler.runtime.cpu_linear import prepack_linears
    from bucket_scheduler.runtime.models import load_model
    from bucket_scheduler.runtime.runner import Runner

    model, tok = load_model(path, dtype, "cpu")
    prepack_linears(model)
    t0 = time.perf_counter()
    runner = Runner(model, tok, fast_path=variant != "hf", max_prefill_tokens=args.max_prefill_tokens)
    build_s = time.perf_counter() - t0
    rss = _rss_mb()
    return model, tok, runner, build_s, rss


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def make_seqs(tok, vocab, n, plen, tag, seed=0):
    from bucket_scheduler.runtime.api import SamplingParams
    from bucket_scheduler.runtime.detokenizer import IncrementalDetokenizer
    from bucket_scheduler.runtime.sequence import Sequence

    rng = random.Random(seed)
    return [Sequence(f"{tag}{i}", [rng.randrange(100, vocab) for _ in range(plen)],
                     SamplingParams(max_tokens=10**6, ignore_eos=True), frozenset(), IncrementalDetokenizer(tok, []))
            for i in range(n)]


def main(argv=None):
    import torch

    from bucket_scheduler.runtime.models import resolve_dtype, resolve_model

    ap = argparse.ArgumentParser(prog="bucketserve-bench step", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="hf,lean")
    ap.add_argument("--rows", default="1,32", help="decode batch sizes")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help="decode steps timed per variant")
    ap.add_argument("--rounds", type=int, default=3, help="prefill rounds per variant")
    ap.add_argument("--max-prefill-tokens", type=int, default=8192)
    ap.add_argument("--quick", action="store_true", help="tiny model, float32, few short steps: seconds")
    ap.add_argument("--json", action="store_true", help="the results as one JSON line, the last line of stdout")
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.dtype, args.rows = args.model or "tiny", "float32", "1,4"
        args.prompt_len, args.steps, args.rounds = min(args.prompt_len, 32), min(args.steps, 4), min(args.rounds, 1)
    out = sys.stderr if args.json else sys.stdout
    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    dtype = resolve_dtype(args.dtype, "cpu")
    variants = args.variants.split(",")
    rows = [int(x) for x in args.rows.split(",")]
    P = args.prompt_len
    setups = {}
    for v in variants:
        model, tok, runner, build_s, rss = build(v, path, dtype, args)
        setups[v] = (model, tok)
        print(f"{v}: runner built in {build_s:.1f} s, process RSS {rss:.0f} MB after it", file=out, flush=True)
    vocab = setups[variants[0]][0].config.vocab_size

    from bucket_scheduler.runtime.runner import Runner

    def runner_for(v):
        model, tok = setups[v]
        runner = Runner(model, tok, fast_path=v != "hf", max_prefill_tokens=args.max_prefill_tokens)
        if v == "lean-mm":  # the lean step with attention.py's matmul decode attention
            runner.lean.sdpa_decode = False
        return runner

    decode_ms = {(v, n): [] for v in variants for n in rows}
    decode_cpu = {(v, n): [] for v in variants for n in rows}
    prefill = {v: [] for v in variants}
    warm_s = {}
    with torch.inference_mode():
        runners = {}
        for n in rows:
            for v in variants:
                r = runner_for(v)
                r.prefill(make_seqs(setups[v][1], vocab, n, P, f"{v}{n}-"))
                t0 = time.perf_counter()
                r.decode()  # warm-up
                r.decode()
                warm_s[(v, n)] = time.perf_counter() - t0
                runners[(v, n)] = r
        # Decode: the variants alternate step by step (A, B, A, B, ...), so load changes on a
        # shared machine hit them alike and every variant sees the same context lengths.
        for n in rows:
            for _ in range(args.steps):
                for v in variants:
                    r = runners[(v, n)]
                    c0, t0 = time.process_time(), time.perf_counter()
                    r.decode()
                    decode_ms[(v, n)].append((time.perf_counter() - t0) * 1000)
                    decode_cpu[(v, n)].append((time.process_time() - c0) * 1000)
            for v in variants:
                del runners[(v, n)]
        for rnd in range(args.rounds):
            for v in (variants if rnd % 2 == 0 else variants[::-1]):  # prefill of max(rows) prompts, empty runner
                r = runner_for(v)
                seqs = make_seqs(setups[v][1], vocab, max(rows), P, f"p{rnd}{v}-", seed=rnd + 1)
                t0 = time.perf_counter()
                r.prefill(seqs)
                prefill[v].append(len(seqs) * P / (time.perf_counter() - t0))
                del r
    print(f"\nmodel {path.name}, {dtype}, {torch.get_num_threads()} threads, prompt {P} tokens, {args.steps} decode steps "
          f"alternating per step, {args.rounds} prefill rounds alternating; medians (min-max); CPU = process CPU time",
          file=out)
    base = variants[0]
    results = {"model": path.name, "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
               "prompt_tokens": P, "decode": [], "prefill": []}
    for n in rows:
        for v in variants:
            xs = decode_ms[(v, n)]
            med = statistics.median(xs)
            ratio = statistics.median(decode_ms[(base, n)]) / med
            cpu = statistics.median(decode_cpu[(v, n)])
            results["decode"].append({"rows": n, "variant": v, "step_ms": med, "tok_s": n / med * 1000,
                                      f"vs_{base}": ratio, "cpu_ms": cpu})
            print(f"decode {n:>3} rows  {v:<9} {med:7.1f} ms/step ({min(xs):.1f}-{max(xs):.1f})  "
                  f"{n / med * 1000:7.0f} tok/s  x{ratio:.2f} vs {base}  CPU {cpu:.1f} ms/step  "
                  f"(warm-up 2 steps {warm_s[(v, n)]:.1f} s)", file=out)
    for v in variants if args.rounds else ():
        xs = prefill[v]
        results["prefill"].append({"rows": max(rows), "variant": v, "tok_s": statistics.median(xs)})
        print(f"prefill {max(rows)}x{P}   {v:<9} {statistics.median(xs):7.0f} tok/s ({min(xs):.0f}-{max(xs):.0f})", file=out)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
