"""bucketserve-bench engine --served: what serving through Triton costs against the in-process engine.

The same streamed requests go, round after round, to an in-process Engine and to a real
tritonserver started with the same settings (one model instance, gRPC streams through our
client library); the two stay up for the whole run and alternate, so both see the same
machine. Per round: output tokens/s (first send to last final), TTFT and TPOT medians, and
the CPU seconds of this process (engine threads or client) and of the server's processes
(tritonserver and its Python stub), which share the same cores.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import threading
import time
from dataclasses import asdict, dataclass

from bucket_scheduler.core.stats import percentile

from .engine_bench import engine_config, engine_params, progress, trace_workload

SERVED_MODEL = "bucketserve"


@dataclass
class Round:
    system: str  # engine | served
    output_tokens: int
    duration_s: float
    out_tok_s: float
    ttft_p50: float | None
    tpot_p50: float | None
    self_cpu_s: float  # this process: the engine's threads, or the client
    server_cpu_s: float  # tritonserver and its stub (0 in-process)
    errors: int


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _tree_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _delay(args, w, t0: float) -> float:
    return (t0 + w.arrival_s / args.rate_scale - time.monotonic()) if args.arrivals == "trace" else 0.0


def _engine_round(args, engine, workload, prompts, tag: str) -> Round:
    from bucket_scheduler.runtime.api import GenerationRequest, SamplingParams

    finals, first, lock, done = {}, {}, threading.Lock(), threading.Event()

    def on_output(out):
        with lock:
            if out.delta_text and out.request_id not in first:
                first[out.request_id] = time.monotonic()
            if out.finished:
                finals[out.request_id] = (out, time.monotonic())
                if len(finals) == len(workload):
                    done.set()

    c0, t0 = _self_cpu(), time.monotonic()
    sent = {}
    for i, (w, prompt) in enumerate(zip(workload, prompts)):
        d = _delay(args, w, t0)
        if d > 0:
            time.sleep(d)
        rid = f"{tag}-{i}"
        sent[rid] = time.monotonic()
        engine.submit(GenerationRequest(request_id=rid, prompt=prompt, stream=True,
                                        sampling=SamplingParams(max_tokens=w.output_len, ignore_eos=True)), on_output)
    done.wait()
    duration = time.monotonic() - t0
    ttft, tpot, tokens, errors = [], [], 0, 0
    for rid, (out, end) in finals.items():
        if out.finish_reason not in ("length", "stop"):
            errors += 1
            continue
        tokens += out.num_output_tokens
        if rid in first:
            ttft.append(first[rid] - sent[rid])
            if out.num_output_tokens > 1:
                tpot.append((end - first[rid]) / (out.num_output_tokens - 1))
    return Round("engine", tokens, duration, tokens / duration, percentile(ttft, 50), percentile(tpot, 50),
                 _self_cpu() - c0, 0.0, errors)


async def _served_round(args, url: str, server_pid: int, workload, prompts) -> Round:
    from bucketserve_client.aio import AsyncGrpcClient, RequestFailed

    client = AsyncGrpcClient(url, SERVED_MODEL)
    t0 = time.monotonic()

    async def one(w, prompt):
        d = _delay(args, w, t0)
        if d > 0:
            await asyncio.sleep(d)
        start, first, n = time.monotonic(), None, 0
        try:
            async for chunk in client.stream(prompt, stream=True, max_tokens=w.output_len, ignore_eos=True):
                if chunk.text and first is None:
                    first = time.monotonic()
                if chunk.final:
                    n = chunk.num_output_tokens or 0
        except RequestFailed:
            return None
        end = time.monotonic()
        return n, (first - start) if first else None, ((end - first) / (n - 1)) if first and n > 1 else None

    c0, s0 = _self_cpu(), _tree_cpu(server_pid)
    results = await asyncio.gather(*(one(w, p) for w, p in zip(workload, prompts)))
    duration = time.monotonic() - t0
    await client.close()
    ok = [r for r in results if r is not None]
    tokens = sum(r[0] for r in ok)
    return Round("served", tokens, duration, tokens / duration, percentile([r[1] for r in ok if r[1] is not None], 50),
                 percentile([r[2] for r in ok if r[2] is not None], 50), _self_cpu() - c0,
                 _tree_cpu(server_pid) - s0, len(results) - len(ok))


def served_mode(args) -> dict:
    from bucket_scheduler.runtime.engine import Engine
    from bucket_scheduler.serving.launcher import ServerOptions, start_server

    cfg = engine_config(args, max_queue_requests=max(1024, args.num_requests + 1))
    workload, prompts = trace_workload(args, cfg)
    params = {**engine_params(args), "max_queue_requests": str(cfg.max_queue_requests)}
    progress("starting tritonserver with the same settings ...")
    server = start_server(ServerOptions(models=[SERVED_MODEL], overrides={SERVED_MODEL: params}, http_port=0, grpc_port=0,
                                        metrics_port=0), log=lambda *a: None)
    engine = Engine(cfg).start()
    rounds: list[Round] = []
    try:
        progress("warm-up: one round of each, not counted")
        _engine_round(args, engine, workload[:4], prompts[:4], "warm")
        asyncio.run(_served_round(args, server.grpc_url, server.pid, workload[:4], prompts[:4]))
        for k in range(args.rounds):
            for system in ("engine", "served") if k % 2 == 0 else ("served", "engine"):
                if system == "engine":
                    r = _engine_round(args, engine, workload, prompts, f"r{k}")
                else:
                    r = asyncio.run(_served_round(args, server.grpc_url, server.pid, workload, prompts))
                rounds.append(r)
                progress(f"  round {k} {system:>6}: {r.out_tok_s:7.1f} out tok/s in {r.duration_s:6.1f} s, TTFT p50 "
                         f"{r.ttft_p50 or 0:.2f} s, TPOT p50 {1000 * (r.tpot_p50 or 0):.1f} ms, CPU s: self "
                         f"{r.self_cpu_s:.1f}, server {r.server_cpu_s:.1f}, errors {r.errors}")
    finally:
        engine.shutdown(timeout_s=1)
        server.stop()
    med = {s: statistics.median(r.out_tok_s for r in rounds if r.system == s) for s in ("engine", "served")}
    ratio = med["served"] / med["engine"] if med["engine"] else None
    progress(f"served / in-process engine, output tokens/s (median of {args.rounds} rounds each): "
             f"{med['served']:.1f} / {med['engine']:.1f} = x{ratio:.3f}")
    return {"mode": "served", "ratio_served_engine": ratio, "served_out_tok_s": med["served"],
            "engine_out_tok_s": med["engine"], "rounds": [asdict(r) for r in rounds], "settings": params}
