"""bucketserve-bench engine: the torch engine in-process (no Triton), trace replay per policy or raw speed.

Trace replay (default): consecutive rows of an Azure trace are replayed through one Engine per
policy (bucket, static, continuous, uellm), same requests, same model, one after the other in
this run, and the figures are printed side by side with the ratios bucket/static and
bucket/continuous. Lengths are scaled to fit a small CPU: prompt = clip(ContextTokens / --scale,
1, --limit), output = clip(GeneratedTokens / --output-scale, 1, --max-output); every request
generates exactly its output length (ignore_eos). Arrivals: all at t=0 (--arrivals saturated,
the throughput test) or at the trace's own times divided by --rate-scale.

Raw speed (--raw): prefill tokens/s and decode tokens/s of the engine's own runner with --batch
sequences, in the served dtype and settings, next to this machine's matmul limit measured just
before the run (--hf adds plain transformers generate() on the same model).

Served against in-process (--served): the trace requests, streamed, through the in-process engine
and through a real tritonserver started with the same settings (gRPC, our client library),
alternating rounds; output tokens/s, TTFT and TPOT of each, the ratio, and where the CPU went
(this process, the server's processes).

Engine settings: --set KEY=VALUE (repeatable) sets any EngineConfig field, scheduler.X a
scheduler option, parsed as config.pbtxt parameters are (serving/settings.py).

  bucketserve-bench engine --trace data/azure_llm_2023_conv.csv
  bucketserve-bench engine --raw --set dtype=bfloat16
  bucketserve-bench engine --served --rounds 3        # the same requests served by tritonserver
  bucketserve-bench engine --quick [--raw] --json    # tiny model, seconds; one JSON line last
  bucketserve-bench engine --set device=cuda         # the same on a GPU
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace

from bucket_scheduler.core.stats import percentile
from bucket_scheduler.core.trace import load_trace

from .workload import DEFAULT_TRACES, LengthShaping, PromptBuilder

POLICIES = ("bucket", "static", "continuous", "uellm")
# What the bench sets unless --set says otherwise (the rest are EngineConfig's own defaults).
BENCH_SETTINGS = {"max_model_len": "1024"}


def progress(*parts) -> None:
    """Progress and tables go to stderr, so that --json's line is alone on stdout."""
    print(*parts, file=sys.stderr, flush=True)


def engine_params(args) -> dict[str, str]:
    """The settings as config.pbtxt parameters: the bench's defaults, then --set."""
    params = {**BENCH_SETTINGS, **({"model_dir": "tiny", "dtype": "float32"} if args.quick else {})}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        params[key.strip()] = value
    return params


def engine_config(args, **fields):
    """EngineConfig from the bench's defaults, --set and `fields` (which win)."""
    from bucket_scheduler.runtime.api import EngineConfig
    from bucket_scheduler.serving.settings import engine_config_from_parameters

    return replace(engine_config_from_parameters(engine_params(args), EngineConfig()), **fields)


# --- trace replay ---------------------------------------------------------------------------


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
    ttft_p50: float | None
    ttft_p99: float | None
    tpot_p50: float | None
    tpot_p99: float | None
    errors: int
    preemptions: int
    steps: int
    kv_peak_mib: float
    options: dict = field(default_factory=dict)


def run_policy(args, policy: str, workload, prompts, options) -> PolicyResult:
    from bucket_scheduler.runtime.api import GenerationRequest, SamplingParams
    from bucket_scheduler.runtime.engine import Engine

    base = engine_config(args)
    # "bucket:tuned" runs policy bucket under the label bucket:tuned
    cfg = replace(base, policy=policy.split(":")[0], max_queue_requests=max(1024, len(workload) + 1),
                  scheduler_options={**base.scheduler_options, **options})
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
        engine.submit(GenerationRequest(request_id=f"{policy}-{i}", prompt=prompt,
                                        sampling=SamplingParams(max_tokens=w.output_len, ignore_eos=True)), on_output)
    done.wait()
    duration = time.monotonic() - t0
    stats = engine.stats()
    engine.shutdown(timeout_s=1)
    outs = list(finals.values())
    ok = [o for o in outs if o.finish_reason in ("length", "stop")]
    out_tokens = sum(o.num_output_tokens for o in ok)
    ttft = [o.metrics.ttft_s for o in ok if o.metrics.ttft_s is not None]
    tpot = [o.metrics.tpot_s for o in ok if o.metrics.tpot_s is not None]
    return PolicyResult(
        policy=policy, requests=len(outs), duration_s=duration, output_tokens=out_tokens,
        prompt_tokens=sum(o.num_input_tokens for o in ok), out_tok_s=out_tokens / duration, req_s=len(ok) / duration,
        prefill_padding_eff=stats.prefill_padding_efficiency, decode_kv_eff=stats.decode_kv_efficiency,
        ttft_p50=percentile(ttft, 50), ttft_p99=percentile(ttft, 99), tpot_p50=percentile(tpot, 50),
        tpot_p99=percentile(tpot, 99), errors=len(outs) - len(ok), preemptions=stats.counters.preemptions,
        steps=stats.counters.steps, kv_peak_mib=kv_peak[0] / 2**20, options=options,
    )  # fmt: skip


def print_table(results: list[PolicyResult]) -> None:
    cols = [
        ("policy", "{:<14}", lambda r: r.policy),
        ("out tok/s", "{:>9.1f}", lambda r: r.out_tok_s),
        ("req/s", "{:>7.2f}", lambda r: r.req_s),
        ("pad eff", "{:>7.2f}", lambda r: r.prefill_padding_eff),
        ("kv eff", "{:>6.2f}", lambda r: r.decode_kv_eff),
        ("TTFT p50", "{:>8.2f}", lambda r: r.ttft_p50 or 0.0),
        ("TTFT p99", "{:>8.2f}", lambda r: r.ttft_p99 or 0.0),
        ("TPOT p50", "{:>8.3f}", lambda r: r.tpot_p50 or 0.0),
        ("TPOT p99", "{:>8.3f}", lambda r: r.tpot_p99 or 0.0),
        ("time s", "{:>7.1f}", lambda r: r.duration_s),
        ("steps", "{:>6}", lambda r: r.steps),
        ("preempt", "{:>7}", lambda r: r.preemptions),
        ("errors", "{:>6}", lambda r: r.errors),
        ("KV MiB", "{:>7.1f}", lambda r: r.kv_peak_mib),
    ]
    widths = [max(len(name), len(fmt.format(get(results[0])))) for name, fmt, get in cols]
    progress("  ".join(name.rjust(w) if i else name.ljust(w) for i, ((name, _, _), w) in enumerate(zip(cols, widths))))
    for r in results:
        progress("  ".join(fmt.format(get(r)).rjust(w) for (_, fmt, get), w in zip(cols, widths)))
    progress("(pad eff: useful / computed prompt token slots in prefill; kv eff: real / attended KV slots in decode;"
             " TTFT, TPOT in seconds)")
    for top in [r for r in results if r.policy.split(":")[0] == "bucket"]:
        for base in [r for r in results if r.policy.split(":")[0] != "bucket"]:
            if base.out_tok_s > 0 and base.req_s > 0:
                progress(f"{top.policy}/{base.policy}: output tokens/s x{top.out_tok_s / base.out_tok_s:.2f}, "
                         f"requests/s x{top.req_s / base.req_s:.2f}")


def trace_workload(args, cfg):
    """The trace rows scaled to this machine, and a prompt of each row's length."""
    from bucket_scheduler.runtime.models import resolve_model
    from transformers import AutoTokenizer

    shaping = LengthShaping(1 / args.scale, 1 / args.output_scale, 1, args.limit, 1, args.max_output)
    rows = load_trace(args.trace, args.num_requests, start=args.start)
    workload = [replace(r, prompt_len=p, output_len=o) for r in rows for p, o in [shaping.apply(r)]]
    model_dir = resolve_model(cfg.model_dir)
    builder, rng = PromptBuilder(AutoTokenizer.from_pretrained(model_dir, local_files_only=True)), random.Random(args.seed)
    prompts = [builder.build(w.prompt_len, rng) for w in workload]
    p, o = [w.prompt_len for w in workload], [w.output_len for w in workload]
    progress(f"trace {rows[0].source}: {len(workload)} requests from row {args.start}; {shaping.describe()} -> prompt "
             f"p50 {statistics.median(p):.0f} max {max(p)}, output p50 {statistics.median(o):.0f} max {max(o)}; arrivals "
             f"{args.arrivals}" + (f" (trace time / {args.rate_scale:g})" if args.arrivals == "trace" else " (all at t=0)"))
    progress(f"model {model_dir.name}, device {cfg.device}, dtype {cfg.dtype}, threads {cfg.threads or 'all'}, "
             f"max_num_seqs {cfg.max_num_seqs}, max_model_len {cfg.max_model_len}")
    return workload, prompts


def trace_mode(args) -> dict:
    cfg = engine_config(args)
    workload, prompts = trace_workload(args, cfg)
    results = []
    for policy in args.policies.split(","):
        options = json.loads(args.options[policy]) if policy in args.options else {}
        r = run_policy(args, policy, workload, prompts, options)
        progress(f"  {policy}: {r.out_tok_s:.1f} output tok/s in {r.duration_s:.1f} s (options {options or 'defaults'})")
        results.append(r)
    print_table(results)
    return {"mode": "trace", "settings": asdict(cfg), "results": [asdict(r) for r in results]}


# --- raw speed ------------------------------------------------------------------------------


def matmul_peak_gflops(dtype, device: str, n: int = 2048, tries: int = 3) -> float:
    """Best of `tries` n x n matmuls in this dtype on the current torch threads."""
    import torch

    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b  # warm-up
    best = float("inf")
    for _ in range(tries):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def raw_mode(args) -> dict:
    import torch

    from bucket_scheduler.runtime.api import SamplingParams
    from bucket_scheduler.runtime.detokenizer import IncrementalDetokenizer
    from bucket_scheduler.runtime.engine import Engine
    from bucket_scheduler.runtime.sequence import Sequence

    engine = Engine(engine_config(args))  # not started: its runner is driven directly
    runner, device, B, P, steps = engine.runner, engine.device, args.batch, args.prompt_len, args.decode_steps
    vocab = engine.model.config.vocab_size
    gflop_per_token = 2 * sum(p.numel() for p in engine.model.parameters()) / 1e9  # a multiply-add per weight
    rng = random.Random(0)

    def seqs(tag, n):
        return [Sequence(f"{tag}{i}", [rng.randrange(100, vocab) for _ in range(P)], SamplingParams(max_tokens=10**6, ignore_eos=True),
                         frozenset(), IncrementalDetokenizer(engine.tokenizer, [])) for i in range(n)]

    with torch.inference_mode():
        warm = seqs("w", 2)
        runner.prefill(warm)
        runner.decode()
        for s in warm:
            runner.remove(s.request_id)
        peak = matmul_peak_gflops(engine.dtype, device)  # just before the run, on the engine's threads
        batch = seqs("r", B)
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
        hf = hf_generate_speed(engine.model, B, P, steps, vocab, device) if args.hf else (None, None)
    result = {
        "mode": "raw", "model": engine.model_path.name, "device": device, "dtype": str(engine.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "sequences": B, "prompt_tokens": P, "decode_steps": steps,
        "context_tokens": P + 1 + steps,  # the context length decode reaches
        "prefill_tok_s": B * P / t_prefill, "decode_tok_s": B / t_decode, "decode_step_ms": t_decode * 1000,
        "peak_gflops_now": peak, "gflop_per_token": gflop_per_token, "limit_tok_s_now": peak / gflop_per_token,
        "hf_prefill_tok_s": hf[0], "hf_decode_tok_s": hf[1], "settings": asdict(engine.config),
    }  # fmt: skip
    progress(f"raw speed: model {result['model']}, device {device}, dtype {result['dtype']}, threads {result['threads']}, "
             f"{B} sequences, prompt {P} tokens, {steps} decode steps")
    progress(f"prefill {result['prefill_tok_s']:.0f} tok/s, decode {result['decode_tok_s']:.0f} tok/s "
             f"({result['decode_step_ms']:.1f} ms/step); matmul limit now {result['limit_tok_s_now']:.0f} tok/s "
             f"({peak:.0f} GFLOP/s / {gflop_per_token:.3g} GFLOP per token)"
             + (f"; HF generate prefill {hf[0]:.0f}, decode {hf[1]:.0f} tok/s" if args.hf else ""))
    return result


def hf_generate_speed(model, B, P, steps, vocab, device):
    """Plain transformers generate(): prefill = one new token; decode from the difference."""
    import torch

    ids = torch.randint(100, vocab, (B, P), generator=torch.Generator().manual_seed(0)).to(device)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0, eos_token_id=None)

    def timed(n):
        _sync(device)
        t0 = time.perf_counter()
        model.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, **kw)
        _sync(device)
        return time.perf_counter() - t0

    timed(2)
    t1 = timed(1)
    tn = timed(1 + steps)
    return B * P / t1, B * steps / max(1e-9, tn - t1)


# --- main -------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="bucketserve-bench engine", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", action="store_true", help="raw prefill / decode speed instead of the trace replay")
    ap.add_argument("--served", action="store_true",
                    help="the same requests through a real tritonserver beside the in-process engine, alternating rounds")
    ap.add_argument("--rounds", type=int, default=3, help="--served: rounds of each (in-process, served)")
    ap.add_argument("--quick", action="store_true", help="tiny model in float32, few requests: a smoke run (seconds)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON line, the last line of stdout")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an EngineConfig field (or scheduler.X), as in config.pbtxt; repeatable")
    ap.add_argument("--trace", default=DEFAULT_TRACES[0], help="trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens)")
    ap.add_argument("--policies", default=",".join(POLICIES),
                    help="comma list; policy:label runs a policy again under another label (give it --option)")
    ap.add_argument("--option", action="append", default=[], metavar="POLICY={json}",
                    help='scheduler options for one policy or label, e.g. static={"max_batch_size": 32}')
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--start", type=int, default=0, help="first trace row")
    ap.add_argument("--scale", type=float, default=8.0, help="prompt = ContextTokens / scale (then clipped)")
    ap.add_argument("--limit", type=int, default=512, help="prompt tokens at most")
    ap.add_argument("--output-scale", type=float, default=4.0, help="output = GeneratedTokens / output-scale")
    ap.add_argument("--max-output", type=int, default=128, help="output tokens at most")
    ap.add_argument("--arrivals", choices=("saturated", "trace"), default="saturated")
    ap.add_argument("--rate-scale", type=float, default=1.0, help="with --arrivals trace: trace time divided by this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32, help="--raw: sequences running")
    ap.add_argument("--prompt-len", type=int, default=256, help="--raw: prompt tokens per sequence")
    ap.add_argument("--decode-steps", type=int, default=16, help="--raw: decode steps timed")
    ap.add_argument("--hf", action="store_true", help="--raw: also time transformers generate() on the same model")
    args = ap.parse_args(argv)
    args.options = dict(item.partition("=")[::2] for item in args.option)
    if args.quick:
        args.num_requests = min(args.num_requests, 16)
        args.limit, args.max_output = min(args.limit, 96), min(args.max_output, 16)
        args.prompt_len, args.decode_steps = min(args.prompt_len, 32), min(args.decode_steps, 4)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.served:
        from .served_compare import served_mode

        report = served_mode(args)
    else:
        report = raw_mode(args) if args.raw else trace_mode(args)
    if args.json:
        print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
