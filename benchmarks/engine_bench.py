#!/usr/bin/env python
"""Engine benchmark, in-process (no Triton): trace replay per policy, and raw speed.

Trace replay (default): the Azure LLM conversation trace is replayed through one Engine
per policy (bucket, static, continuous, uellm), same requests, same model, one after the
other in this run, and the figures are printed side by side with the ratios
bucket/static and bucket/continuous.

  Lengths are scaled to fit a small CPU: prompt = clip(ContextTokens / --scale, 1, --limit),
  output = clip(GeneratedTokens / --output-scale, 1, --max-output); every request
  generates exactly its output length (ignore_eos). Prompts are random single-token
  words, so a prompt of n tokens is n tokens. Arrivals: all at t=0 (--arrivals saturated,
  the throughput test) or at the trace's own times divided by --rate-scale.

Raw speed (--raw): prefill tokens/s and decode tokens/s with --batch sequences running,
per dtype, next to this machine's matmul limit and plain transformers generate().

  python benchmarks/engine_bench.py --trace data/azure_llm_2023_conv.csv
  python benchmarks/engine_bench.py --raw
  python benchmarks/engine_bench.py --quick          # tiny model, a few requests (CI smoke)
  python benchmarks/engine_bench.py --device cuda    # the same on a GPU
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TRACE = REPO / "data" / "azure_llm_2023_conv.csv"
POLICIES = ("bucket", "static", "continuous", "uellm")
# This CPU (2 cores), measured by the project: fp32 and bf16 matmul peaks.
REFERENCE_PEAK_GFLOPS = {"float32": 177.0, "bfloat16": 419.0}


# --- workload ---------------------------------------------------------------------------


@dataclass
class TraceRequest:
    arrival_s: float
    prompt_len: int
    output_len: int


def load_trace(path: Path, n: int, start: int, scale: float, limit: int, output_scale: float, max_output: int):
    rows = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if i < start:
                continue
            if len(rows) >= n:
                break
            rows.append(row)
    if not rows:
        raise SystemExit(f"no rows read from {path}")
    t0 = _parse_ts(rows[0]["TIMESTAMP"])
    out = []
    for row in rows:
        ctx, gen = int(row["ContextTokens"]), int(row["GeneratedTokens"])
        out.append(
            TraceRequest(
                arrival_s=_parse_ts(row["TIMESTAMP"]) - t0,
                prompt_len=max(1, min(limit, round(ctx / scale))),
                output_len=max(1, min(max_output, round(gen / output_scale))),
            )
        )
    return out


def _parse_ts(text: str) -> float:
    from datetime import datetime

    head, _, frac = text.partition(".")
    return datetime.strptime(head, "%Y-%m-%d %H:%M:%S").timestamp() + (float("0." + frac) if frac else 0.0)


class PromptMaker:
    """Prompts of an exact token count: random words that are one token each."""

    def __init__(self, tokenizer, seed: int = 0):
        self.tok = tokenizer
        self.rng = random.Random(seed)
        words = []
        for w in ("the of and to in is was for on that with as by at from his her it an be this are have "
                  "not but had they which one you were all we can there their has been if more when will "
                  "would who so no time out up about into than them only other new some could these two "
                  "may first then do any like my now over such our man me even most made after also did "
                  "many before must through back years where much your way well down should because each "
                  "just those people how too little state good very make world still own see men work long "
                  "get here between both life being under never day same another know while last might us "
                  "great old year off come since against go came right used take three").split():
            if len(tokenizer.encode(" " + w, add_special_tokens=False)) == 1:
                words.append(w)
        if len(words) < 20:  # a small tokenizer: fall back to its own single-token pieces
            words = [t for t in ("a", "b", "c", "d", "e", "the", "is") if tokenizer.encode(" " + t, add_special_tokens=False)]
        self.words = words
        self.bos = len(tokenizer.encode("x")) - len(tokenizer.encode("x", add_special_tokens=False))

    def make(self, n_tokens: int) -> str:
        n = max(1, n_tokens - self.bos)
        first = self.rng.choice(self.words).capitalize()
        rest = [self.rng.choice(self.words) for _ in range(n - 1)]
        text = " ".join([first] + rest)
        # Trim or pad to the exact count (the first word may split in two).
        while len(self.tok.encode(text)) > n_tokens and " " in text:
            text = text.rsplit(" ", 1)[0]
        while len(self.tok.encode(text)) < n_tokens:
            text += " " + self.rng.choice(self.words)
        return text


# --- trace replay -------------------------------------------------------------------------


@dataclass
class PolicyResult:
    policy: str
    requests: int
    duration_s: float
    output_tokens: int
    prompt_tokens: int
    out_tok_s: float
    req_s: float
    prefill_padding_eff: float
    decode_kv_eff: float
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float
    tpot_p99: float
    errors: int
    preemptions: int
    steps: int
    kv_peak_mib: float
    options: dict = field(default_factory=dict)


def pct(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def run_policy(args, policy: str, workload, prompts, options) -> PolicyResult:
    from bucket_scheduler.runtime.api import EngineConfig, GenerationRequest, SamplingParams
    from bucket_scheduler.runtime.engine import Engine

    cfg = EngineConfig(
        model_dir=args.model,
        policy=policy.split(":")[0],  # "bucket:tuned" runs policy bucket under the label bucket:tuned
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        memory_probe=args.memory_probe,
        max_queue_requests=max(1024, len(workload) + 1),
        scheduler_options=options,
    )
    engine = Engine(cfg).start()
    finals = {}
    done = threading.Event()
    lock = threading.Lock()
    kv_peak = [0]

    def on_output(out):
        if out.finished:
            with lock:
                finals[out.request_id] = out
                if len(finals) == len(workload):
                    done.set()

    def sample_kv():
        while not done.wait(0.05):
            kv_peak[0] = max(kv_peak[0], engine.runner.kv_bytes())

    threading.Thread(target=sample_kv, daemon=True).start()
    t0 = time.monotonic()
    for i, (w, prompt) in enumerate(zip(workload, prompts)):
        if args.arrivals == "trace":
            delay = t0 + w.arrival_s / args.rate_scale - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        engine.submit(
            GenerationRequest(
                request_id=f"{policy}-{i}",
                prompt=prompt,
                sampling=SamplingParams(max_tokens=w.output_len, ignore_eos=True),
            ),
            on_output,
        )
    done.wait()
    duration = time.monotonic() - t0
    stats = engine.stats()
    engine.shutdown(timeout_s=1)
    outs = list(finals.values())
    ok = [o for o in outs if o.finish_reason in ("length", "stop")]
    out_tokens = sum(o.num_output_tokens for o in ok)
    return PolicyResult(
        policy=policy,
        requests=len(outs),
        duration_s=duration,
        output_tokens=out_tokens,
        prompt_tokens=sum(o.num_input_tokens for o in ok),
        out_tok_s=out_tokens / duration,
        req_s=len(ok) / duration,
        prefill_padding_eff=stats.prefill_padding_efficiency,
        decode_kv_eff=stats.decode_kv_efficiency,
        ttft_p50=pct([o.metrics.ttft_s for o in ok if o.metrics.ttft_s is not None], 50),
        ttft_p99=pct([o.metrics.ttft_s for o in ok if o.metrics.ttft_s is not None], 99),
        tpot_p50=pct([o.metrics.tpot_s for o in ok if o.metrics.tpot_s is not None], 50),
        tpot_p99=pct([o.metrics.tpot_s for o in ok if o.metrics.tpot_s is not None], 99),
        errors=len(outs) - len(ok),
        preemptions=stats.counters.preemptions,
        steps=stats.counters.steps,
        kv_peak_mib=kv_peak[0] / 2**20,
        options=options,
    )


def print_table(results: list[PolicyResult]) -> None:
    cols = [
        ("policy", "{:<14}", lambda r: r.policy),
        ("out tok/s", "{:>9.1f}", lambda r: r.out_tok_s),
        ("req/s", "{:>7.2f}", lambda r: r.req_s),
        ("pad eff", "{:>7.2f}", lambda r: r.prefill_padding_eff),
        ("kv eff", "{:>6.2f}", lambda r: r.decode_kv_eff),
        ("TTFT p50", "{:>8.2f}", lambda r: r.ttft_p50),
        ("TTFT p99", "{:>8.2f}", lambda r: r.ttft_p99),
        ("TPOT p50", "{:>8.3f}", lambda r: r.tpot_p50),
        ("TPOT p99", "{:>8.3f}", lambda r: r.tpot_p99),
        ("time s", "{:>7.1f}", lambda r: r.duration_s),
        ("steps", "{:>6}", lambda r: r.steps),
        ("preempt", "{:>7}", lambda r: r.preemptions),
        ("errors", "{:>6}", lambda r: r.errors),
        ("KV MiB", "{:>7.1f}", lambda r: r.kv_peak_mib),
    ]
    widths = [max(len(name), len(fmt.format(get(results[0])))) for name, fmt, get in cols]
    print("  ".join(name.rjust(w) if i else name.ljust(w) for i, ((name, _, _), w) in enumerate(zip(cols, widths))))
    for r in results:
        print("  ".join(fmt.format(get(r)).rjust(w) for (_, fmt, get), w in zip(cols, widths)))
    by = {r.policy: r for r in results}
    print("(pad eff: useful / computed prompt token slots in prefill; kv eff: real / attended KV slots in decode;"
          " TTFT, TPOT in seconds)")
    for top in [r for r in results if r.policy.split(":")[0] == "bucket"]:
        for base in [r for r in results if r.policy.split(":")[0] != "bucket"]:
            if base.out_tok_s > 0 and base.req_s > 0:
                print(f"{top.policy}/{base.policy}: output tokens/s x{top.out_tok_s / base.out_tok_s:.2f}, "
                      f"requests/s x{top.req_s / base.req_s:.2f}")


def trace_mode(args) -> dict:
    from bucket_scheduler.runtime.models import load_model, resolve_dtype, resolve_model

    path = Path(args.trace)
    workload = load_trace(path, args.num_requests, args.start, args.scale, args.limit, args.output_scale, args.max_output)
    tok_dir = resolve_model(args.model)
    _, tok = _load_tokenizer(tok_dir)
    maker = PromptMaker(tok, seed=args.seed)
    prompts = [maker.make(w.prompt_len) for w in workload]
    p = [w.prompt_len for w in workload]
    o = [w.output_len for w in workload]
    print(f"trace {path.name}: {len(workload)} requests from row {args.start}; prompt = clip(context/{args.scale:g}, 1, "
          f"{args.limit}) -> p50 {statistics.median(p):.0f} max {max(p)}; output = clip(generated/{args.output_scale:g}, 1, "
          f"{args.max_output}) -> p50 {statistics.median(o):.0f} max {max(o)}; arrivals {args.arrivals}"
          + (f" (trace time / {args.rate_scale:g})" if args.arrivals == "trace" else " (all at t=0)"))
    print(f"model {tok_dir.name}, device {args.device}, dtype {args.dtype} "
          f"({resolve_dtype(args.dtype, _device(args.device))}), threads {args.threads or 'all'}, "
          f"max_num_seqs {args.max_num_seqs}, max_model_len {args.max_model_len}")
    sys.stdout.flush()
    results = []
    for policy in args.policies.split(","):
        options = json.loads(args.options[policy]) if policy in args.options else {}
        r = run_policy(args, policy, workload, prompts, options)
        print(f"  {policy}: {r.out_tok_s:.1f} output tok/s in {r.duration_s:.1f} s (options {options or 'defaults'})",
              flush=True)
        results.append(r)
    print()
    print_table(results)
    return {"mode": "trace", "args": _args_dict(args), "results": [asdict(r) for r in results]}


# --- raw speed ---------------------------------------------------------------------------


def matmul_peak_gflops(dtype, device: str, n: int = 1024, seconds: float = 1.0) -> float:
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        k += 1
    _sync(device)
    return 2 * n**3 * k / (time.perf_counter() - t0) / 1e9


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def raw_mode(args) -> dict:
    import torch

    from bucket_scheduler.runtime.api import SamplingParams
    from bucket_scheduler.runtime.cpu_linear import prepack_linears
    from bucket_scheduler.runtime.detokenizer import IncrementalDetokenizer
    from bucket_scheduler.runtime.models import load_model, resolve_dtype, resolve_model
    from bucket_scheduler.runtime.runner import Runner
    from bucket_scheduler.runtime.sequence import Sequence

    device = _device(args.device)
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    path = resolve_model(args.model)
    dtypes = args.raw_dtypes.split(",")
    B, P, steps = args.batch, args.prompt_len, args.decode_steps
    rows = []
    answers = {}
    for name in dtypes:
        dtype = resolve_dtype(name, device)
        model, tok = load_model(path, dtype, device)
        if args.prepack:
            prepack_linears(model)
        flops_per_token = 2 * sum(p.numel() for p in model.parameters())  # multiply-add per weight
        rng = random.Random(0)
        vocab = model.config.vocab_size

        def seqs(tag):
            return [
                Sequence(f"{tag}{i}", [rng.randrange(100, vocab) for _ in range(P)],
                         SamplingParams(max_tokens=10**6, ignore_eos=True), frozenset(),
                         IncrementalDetokenizer(tok, []))
                for i in range(B)
            ]

        with torch.inference_mode():
            runner = Runner(model, tok, max_prefill_tokens=args.max_prefill_tokens)
            warm = seqs("w")[:2]
            runner.prefill(warm)
            runner.decode()
            for s in warm:
                runner.remove(s.request_id)
            batch = seqs("r")
            _sync(device)
            t0 = time.perf_counter()
            runner.prefill(batch)
            _sync(device)
            t_prefill = time.perf_counter() - t0
            runner.decode()
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                runner.decode()
            _sync(device)
            t_decode = (time.perf_counter() - t0) / steps
            del runner
            hf = hf_generate_speed(model, B, P, steps, vocab, device) if args.hf_generate else (None, None)
        peak = matmul_peak_gflops(dtype, device)
        ref = REFERENCE_PEAK_GFLOPS.get(str(dtype).replace("torch.", "")) if device == "cpu" else None
        rows.append({
            "dtype": str(dtype).replace("torch.", ""),
            "prefill_tok_s": B * P / t_prefill,
            "decode_tok_s": B / t_decode,
            "decode_step_ms": t_decode * 1000,
            "hf_prefill_tok_s": hf[0],
            "hf_decode_tok_s": hf[1],
            "peak_gflops_now": peak,
            "limit_tok_s_now": peak * 1e9 / flops_per_token,
            "reference_limit_tok_s": ref * 1e9 / flops_per_token if ref else None,
            "gflop_per_token": flops_per_token / 1e9,
        })
        answers[rows[-1]["dtype"]] = capital_answer(model, tok, device)
        del model
    print(f"raw speed: model {path.name}, device {device}, threads {torch.get_num_threads()}, {B} sequences, "
          f"prompt {P} tokens, {steps} decode steps, prepacked bf16 linears {'on' if args.prepack else 'off'}")
    print(f"{'dtype':<9} {'prefill tok/s':>13} {'decode tok/s':>12} {'step ms':>8} {'HF prefill':>10} {'HF decode':>9} "
          f"{'limit now':>9} {'ref limit':>9}  greedy answer to 'capital of France'")
    for r in rows:
        f = lambda x, w, p=0: (f"{x:>{w}.{p}f}" if x is not None else f"{'-':>{w}}")
        print(f"{r['dtype']:<9} {f(r['prefill_tok_s'], 13)} {f(r['decode_tok_s'], 12)} {f(r['decode_step_ms'], 8, 1)} "
              f"{f(r['hf_prefill_tok_s'], 10)} {f(r['hf_decode_tok_s'], 9)} {f(r['limit_tok_s_now'], 9)} "
              f"{f(r['reference_limit_tok_s'], 9)}  {answers[r['dtype']]!r}")
    print(f"(limit = matmul GFLOP/s / {rows[0]['gflop_per_token']:.2f} GFLOP per token; 'now' measured in this run, "
          f"'ref' from the 2-core reference {REFERENCE_PEAK_GFLOPS}; goals: prefill >= 1000, decode >= 500 tok/s)")
    return {"mode": "raw", "args": _args_dict(args), "results": rows, "answers": answers}


def hf_generate_speed(model, B, P, steps, vocab, device):
    """Plain transformers generate(): prefill = one new token; decode from the difference."""
    import torch

    ids = torch.randint(100, vocab, (B, P), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)

    def timed(n):
        _sync(device)
        t0 = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, **kw)
        _sync(device)
        return time.perf_counter() - t0

    timed(2)
    t1 = timed(1)
    tn = timed(1 + steps)
    return B * P / t1, B * steps / max(1e-9, tn - t1)


def capital_answer(model, tok, device) -> str:
    import torch

    if not getattr(tok, "chat_template", None):
        return ""
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt", add_special_tokens=False).to(device)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


# --- main ------------------------------------------------------------------------------------


def _device(name: str) -> str:
    from bucket_scheduler.runtime.models import resolve_device

    return resolve_device(name)


def _load_tokenizer(path):
    from transformers import AutoTokenizer

    return None, AutoTokenizer.from_pretrained(path, local_files_only=True)


def _args_dict(args) -> dict:
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None), dict))}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", action="store_true", help="raw prefill / decode speed instead of the trace replay")
    ap.add_argument("--quick", action="store_true", help="tiny model, few requests: a smoke run for CI")
    ap.add_argument("--trace", default=str(DEFAULT_TRACE), help="trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens)")
    ap.add_argument("--policies", default=",".join(POLICIES),
                    help="comma list; policy:label runs a policy again under another label (give it --option)")
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--start", type=int, default=0, help="first trace row")
    ap.add_argument("--scale", type=float, default=8.0, help="prompt = ContextTokens / scale (then clipped)")
    ap.add_argument("--limit", type=int, default=512, help="prompt tokens at most")
    ap.add_argument("--output-scale", type=float, default=4.0, help="output = GeneratedTokens / output-scale")
    ap.add_argument("--max-output", type=int, default=128, help="output tokens at most")
    ap.add_argument("--arrivals", choices=("saturated", "trace"), default="saturated")
    ap.add_argument("--rate-scale", type=float, default=1.0, help="with --arrivals trace: trace time divided by this")
    ap.add_argument("--model", default=None, help="model dir (default SmolLM2-135M-Instruct; 'tiny' for the test model)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--memory-probe", default="auto")
    ap.add_argument("--option", action="append", default=[], metavar="POLICY={json}",
                    help='scheduler options for one policy or label, e.g. static={"max_batch_size": 32}; '
                         'bucket={} runs the core defaults')
    ap.add_argument("--seed", type=int, default=0)
    # raw mode
    ap.add_argument("--batch", type=int, default=32, help="--raw: sequences running")
    ap.add_argument("--prompt-len", type=int, default=256, help="--raw: prompt tokens per sequence")
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--raw-dtypes", default="float32,bfloat16")
    ap.add_argument("--max-prefill-tokens", type=int, default=8192)
    ap.add_argument("--no-hf-generate", dest="hf_generate", action="store_false")
    ap.add_argument("--no-prepack", dest="prepack", action="store_false",
                    help="--raw: plain F.linear instead of prepacked bf16 weights (the engine always prepacks)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    args.options = {}
    for item in args.option:
        policy, _, js = item.partition("=")
        args.options[policy] = js
    if args.quick:
        args.model = args.model or "tiny"
        args.num_requests = min(args.num_requests, 16)
        args.limit, args.max_output = min(args.limit, 96), min(args.max_output, 16)
        args.batch, args.prompt_len, args.decode_steps = 8, 32, 4
        args.max_model_len = min(args.max_model_len, 256)
        if args.dtype == "auto":
            args.dtype = "float32"
        args.raw_dtypes = "float32"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO / "backend"))
    report = raw_mode(args) if args.raw else trace_mode(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
