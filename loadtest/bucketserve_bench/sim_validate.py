"""Does the simulator predict the machine we can measure?  `bucketserve-bench sim --scenario cpu`.

1. Build the serving benchmark's workload (Azure traces, its length shaping and online
   share) twice: a fit set (seed 0) and a validation set (seed 1, other requests).
2. Run our engine in process (the served model, SmolLM2 by default, its served dtype) on
   each set, once per policy, every request queued at t=0 (saturated), recording every
   engine step: whole prompts prefilled, prompt chunks (cached prefix, tokens), KV lengths
   decoded, wall time; a one-pass step (runner.step: chunked prefill with the mixed step)
   as its chunks, a whole prompt being one with prefix 0, and the KV lengths of the rows
   already in the batch.  With --rates, the validation set is also sent at Poisson times
   (the serving benchmark's arrival pattern).
3. Fit the cost model (sim_fit.py) on the fit set's steps, all policies together.
4. Simulate each validation run on one simulated GPU stepping the same policy with the
   engine's options and step semantics (core/sim ColocatedInstance, step_mode "engine":
   the scheduler's own per-step prefill budget and chunking, the engine's passes: one a
   step where the engine ran one), and compare predicted with measured throughput and
   rate at 80% SLO attainment.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from bucket_scheduler.core.clock import CostModel
from bucket_scheduler.core.factory import make_scheduler
from bucket_scheduler.core.memory import FixedProbe, MemoryPlanner
from bucket_scheduler.core.sim import Deployment, simulate
from bucket_scheduler.core.sim.instance import ColocatedInstance
from bucket_scheduler.core.sim.workload import SimRequestSpec

from . import report as rep
from .metrics import RequestResult, rate_at_attainment, summarize_run
from .sim_fit import StepSample, fit_cost_model, fit_error
from .sim_sweep import to_results
from .workload import DEFAULT_TRACES, LengthShaping, PromptBuilder, WorkloadSpec, build_workload, load_tokenizer, poisson_offsets

POLICIES = ("bucket", "static", "continuous", "uellm")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bucketserve-bench sim --scenario cpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--num-requests", type=int, default=24, help="requests per run (the serving benchmark's default)")
    p.add_argument("--model-dir", default=None, help="default: the served model (SmolLM2-135M)")
    p.add_argument("--dtype", default="auto", help="default: the served dtype (bfloat16 on CPU)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--slo-ttft-ms", type=float, default=4000.0, help="online TTFT target (the served benchmark's calibrated 4088 ms)")
    p.add_argument("--slo-tpot-ms", type=float, default=170.0)
    p.add_argument("--rates", default="", help="Poisson rates (req/s) for the SLO comparison on the validation set; empty: skip")
    p.add_argument("--fit-seed", type=int, default=0)
    p.add_argument("--validate-seed", type=int, default=1)
    p.add_argument("--out", default="sim-results/cpu")
    p.add_argument("--json", action="store_true")
    p.add_argument("--from-measured", default=None, help="re-analyse a saved cpu_measured.json instead of running the engine")
    return p.parse_args(argv)


def bench_workload(tokenizer, builder, n: int, seed: int, slo_ttft_ms: float, slo_tpot_ms: float):
    """The serving benchmark's default workload (its CLI defaults), SLOs on the online half."""
    shaping = LengthShaping(0.25, 0.25, 4, 512, 2, 64)
    reqs = build_workload(WorkloadSpec(list(DEFAULT_TRACES), n, seed, shaping, 0.5), tokenizer, builder=builder)
    for r in reqs:
        if r.online:
            r.slo_ttft_ms, r.slo_tpot_ms = slo_ttft_ms, slo_tpot_ms
    return reqs


class EngineRun:
    """One engine (one policy), instrumented to record every step."""

    def __init__(self, args, policy: str):
        from bucket_scheduler.runtime.api import EngineConfig
        from bucket_scheduler.runtime.engine import Engine

        cfg = EngineConfig(model_dir=args.model_dir, policy=policy, dtype=args.dtype, threads=args.threads,
                           max_model_len=args.max_model_len, max_queue_requests=4096)
        self.engine = Engine(cfg).start()
        self.options = cfg.policy_options()
        self.one_pass = self.engine._mixed  # the engine's own decision: one forward pass a step
        self.policy = policy
        self.samples: list[StepSample] = []
        self._cur: dict = {}
        eng, runner = self.engine, self.engine.runner
        step, prefill, prefill_chunk, decode = eng._step, runner.prefill, runner.prefill_chunk, runner.decode
        one_pass = runner.step

        def timed_step():
            self._cur = {}
            t0, c0 = time.perf_counter(), time.thread_time()
            step()
            dt, cpu = time.perf_counter() - t0, time.thread_time() - c0
            if self._cur:
                self.samples.append(StepSample(tuple(self._cur.get("pre", ())), tuple(self._cur.get("dec", ())), dt, cpu,
                                               tuple(self._cur.get("chunks", ())), self._cur.get("mixed", False)))

        def rec_prefill(seqs):
            self._cur["pre"] = [len(s.input_ids) for s in seqs]
            return prefill(seqs)

        def rec_chunk(seq, start, stop):
            self._cur.setdefault("chunks", []).append((start, stop - start))
            return prefill_chunk(seq, start, stop)

        def rec_decode():
            self._cur["dec"] = list(runner.kv.lengths)
            return decode()

        def rec_step(chunks):
            # before the pass: the rows already in the batch decode in it (their KV lengths)
            self._cur.update(mixed=True, chunks=[(start, stop - start) for _, start, stop in chunks],
                             dec=list(runner.kv.lengths) if runner.rows else [])
            return one_pass(chunks)

        eng._step, runner.prefill, runner.prefill_chunk, runner.decode = timed_step, rec_prefill, rec_chunk, rec_decode
        runner.step = rec_step

    def free_bytes(self) -> int:
        return self.engine.planner.probe.free_bytes()

    def run(self, reqs, offsets: list[float] | None, tag: str) -> list[RequestResult]:
        from bucket_scheduler.runtime.api import GenerationRequest, SamplingParams

        done = threading.Event()
        finals: dict[int, object] = {}
        lock = threading.Lock()
        results = [RequestResult(r.index, r.online, r.prompt_tokens, r.output_tokens, 0.0,
                                 slo_ttft_ms=r.slo_ttft_ms, slo_tpot_ms=r.slo_tpot_ms) for r in reqs]

        def on_output(i):
            def cb(out):
                if out.finished:
                    with lock:
                        finals[i] = (out, time.monotonic())
                        if len(finals) == len(reqs):
                            done.set()
            return cb

        t0 = time.monotonic()
        for i, r in enumerate(reqs):
            if offsets:
                delay = t0 + offsets[i] - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            results[i].send_time = time.monotonic() - t0
            self.engine.submit(GenerationRequest(
                request_id=f"{tag}-{i}", prompt=r.prompt, req_class="online" if r.online else "offline",
                slo_ttft_ms=r.slo_ttft_ms, slo_tpot_ms=r.slo_tpot_ms,
                sampling=SamplingParams(max_tokens=r.output_tokens, min_tokens=r.output_tokens, ignore_eos=True),
            ), on_output(i))  # fmt: skip
        done.wait()
        for i, (out, end) in finals.items():
            res = results[i]
            res.end_time = end - t0
            res.output_tokens = out.num_output_tokens
            res.server_prompt_tokens = out.num_input_tokens
            if out.finish_reason in ("length", "stop"):
                res.ttft_s, res.e2e_s = out.metrics.ttft_s, out.metrics.e2e_s
            else:
                res.error = out.error_message or out.finish_reason
        return results

    def close(self) -> None:
        self.engine.shutdown(timeout_s=1)


def _save_measured(path: Path, measured: dict, kv, free: int) -> None:
    path.write_text(json.dumps({"kv": asdict(kv), "free_bytes": free, "policies": {
        p: {"options": m["options"], "one_pass": m["one_pass"], "fit": [asdict(r) for r in m["fit"]], "val": [asdict(r) for r in m["val"]],
            "fit_steps": [asdict(x) for x in m["fit_steps"]], "val_steps": [asdict(x) for x in m["val_steps"]],
            "rates": {str(k): [asdict(r) for r in v] for k, v in m["rates"].items()}}
        for p, m in measured.items()}}))


def load_measured(path: Path):
    """Measurements saved by an earlier run (cpu_measured.json): re-analyse without the engine."""
    from bucket_scheduler.core.memory import KVSpec

    raw = json.loads(Path(path).read_text())
    if "policies" not in raw:  # the first format: policies only, SmolLM2's KV shape, memory never binding
        raw = {"policies": raw, "kv": {"num_layers": 30, "num_kv_heads": 3, "head_dim": 64, "dtype_bytes": 2,
                                       "hidden_size": 576, "intermediate_size": 1536, "vocab_size": 49152},
               "free_bytes": 8 << 30}

    def steps(rows):
        return [StepSample(tuple(x["prefill_lens"]), tuple(x["decode_lens"]), x["seconds"], x.get("cpu_seconds"),
                           tuple(tuple(c) for c in x.get("chunks", ())), x.get("mixed", False))
                for x in rows]  # no chunks: measured before chunking; no "mixed": before the one-pass step

    measured = {p: {"options": m["options"], "fit": [RequestResult(**r) for r in m["fit"]], "val": [RequestResult(**r) for r in m["val"]],
                    "fit_steps": steps(m["fit_steps"]), "val_steps": steps(m["val_steps"]),
                    "rates": {float(k): [RequestResult(**r) for r in v] for k, v in m["rates"].items()}}
                for p, m in raw["policies"].items()}
    for p, m in measured.items():  # saved before the flag: its steps tell
        m["one_pass"] = raw["policies"][p].get("one_pass", any(x.mixed for x in m["fit_steps"] + m["val_steps"]))
    return measured, KVSpec(**raw["kv"]), raw["free_bytes"]


def simulate_run(policy: str, options: dict, cost: CostModel, results: list[RequestResult], kv, free_bytes: int,
                 args, one_pass: bool = False) -> list[RequestResult]:
    """The same requests (the prompt lengths the engine counted, the times they were
    submitted) on one simulated CPU 'GPU'; `one_pass`: the engine ran its one-pass step."""
    planner = MemoryPlanner(kv, FixedProbe(free_bytes), memory_fraction=0.9)
    sched = make_scheduler(policy, planner, args.max_model_len, 32, **options)
    inst = ColocatedInstance("cpu", sched, cost, step_mode="engine", mixed_step=one_pass)
    specs = [SimRequestSpec(i, "bench", r.send_time, r.server_prompt_tokens or r.prompt_tokens,
                            r.expected_output_tokens,
                            None if r.slo_ttft_ms is None else r.slo_ttft_ms / 1000,
                            None if r.slo_tpot_ms is None else r.slo_tpot_ms / 1000)
             for i, r in enumerate(results)]
    return to_results(simulate(Deployment(colocated=[inst]), specs))


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    if args.from_measured:
        measured, kv, free = load_measured(args.from_measured)
    else:
        measured, kv, free = measure(args, out, log)
    clocks = ["wall"] + (["cpu"] if all(x.cpu_seconds is not None for m in measured.values() for x in m["fit_steps"]) else [])
    analyses = {clock: analyse(measured, kv, free, args, clock, log) for clock in clocks}
    report = {"machine": rep.machine_info(), "wall_s": round(time.time() - started, 1), "args": vars(args),
              "load_average": _loadavg(), "clocks": analyses}
    rep.write_json(out / "cpu_validation.json", report)
    md = markdown(report)
    (out / "cpu_validation.md").write_text(md)
    for clock, a in analyses.items():
        plot(a, out / f"cpu_validation_{clock}.png")
    log(md)
    if args.json:
        print(json.dumps({"scenario": "cpu", "clocks": analyses}))
    return 0


def measure(args, out: Path, log):
    """Run the engine per policy on the fit and validation sets (and the Poisson rates)."""
    from bucket_scheduler.runtime.models import resolve_model

    model_dir = resolve_model(args.model_dir)
    tok = load_tokenizer(model_dir)
    builder = PromptBuilder(tok)
    fit_set = bench_workload(tok, builder, args.num_requests, args.fit_seed, args.slo_ttft_ms, args.slo_tpot_ms)
    val_set = bench_workload(tok, builder, args.num_requests, args.validate_seed, args.slo_ttft_ms, args.slo_tpot_ms)
    rates = [float(x) for x in args.rates.split(",") if x.strip()]
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    measured: dict[str, dict] = {}
    kv = free = None
    for policy in policies:
        er = EngineRun(args, policy)
        try:
            kv, free = er.engine.kv_spec, er.free_bytes()
            er.run(fit_set[:2], None, "warm")
            er.samples.clear()
            fit_res = er.run(fit_set, None, "fit")
            fit_steps = list(er.samples)
            er.samples.clear()
            val_res = er.run(val_set, None, "val")
            val_steps = list(er.samples)
            rate_runs = {}
            for rate in rates:
                rate_runs[rate] = er.run(val_set, poisson_offsets(len(val_set), rate, args.validate_seed), f"r{rate:g}")
                log(f"[cpu] {policy}: rate {rate:g} done (load average {_loadavg()})")
        finally:
            er.close()
        measured[policy] = {"options": er.options, "one_pass": er.one_pass, "fit": fit_res, "val": val_res, "fit_steps": fit_steps,
                            "val_steps": val_steps, "rates": rate_runs}
        _save_measured(out / "cpu_measured.json", measured, kv, free)  # kept even if a later policy fails
        s = summarize_run(policy, "offline", None, val_res)
        log(f"[cpu] {policy}: measured {s.output_tokens_per_s:.1f} output tok/s on the validation set, "
            f"{len(fit_steps)} + {len(val_steps)} steps recorded")
    return measured, kv, free


def _loadavg() -> list[float] | None:
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _busy_tok_s(results: list[RequestResult], steps: list[StepSample]) -> float:
    """Output tokens per second of engine CPU time (a saturated run has no idle gaps)."""
    busy = sum(x.cpu_seconds for x in steps)
    return sum(r.output_tokens for r in results) / busy if busy else 0.0


def analyse(measured: dict, kv, free: int, args, clock: str, log) -> dict:
    """Fit on the fit sets' steps timed by `clock`, predict every run, compare.

    wall: step wall times, measured throughput = tokens / run duration, plus the Poisson runs.
    cpu:  the engine thread's CPU time per step (what the step costs without other jobs
          taking the cores), measured throughput = tokens / summed step CPU time."""
    fit_samples = [x.on(clock) for m in measured.values() for x in m["fit_steps"]]
    cost = fit_cost_model(fit_samples)
    kinds = {"three_pass": sum(not x.mixed for x in fit_samples), "one_pass": sum(x.mixed for x in fit_samples)}
    log(f"[cpu] {clock} clock: fitted cost model (ms) on {kinds} steps: prefill {cost.prefill}, "
        f"chunk {cost.chunk or 'as prefill'}, decode {cost.decode_small}, one pass {cost.mixed}")
    rows = []
    for policy, m in measured.items():
        row = {"policy": policy,
               "fit_error_fit_set": fit_error(cost, [x.on(clock) for x in m["fit_steps"]]),
               "fit_error_validation_set": fit_error(cost, [x.on(clock) for x in m["val_steps"]])}
        for label in ("fit", "val"):
            res = m[label]
            if clock == "cpu":  # replay as if every request came at once: the CPU clock has no arrival gaps
                res = [replace(r, send_time=0.0) for r in res]
            meas = summarize_run(policy, "offline", None, m[label])
            pred = summarize_run(policy, "offline", None, simulate_run(policy, m["options"], cost, res, kv, free, args, m["one_pass"]))
            meas_tok_s = meas.output_tokens_per_s if clock == "wall" else _busy_tok_s(m[label], m[f"{label}_steps"])
            row[label] = {"measured_tok_s": round(meas_tok_s, 2), "predicted_tok_s": round(pred.output_tokens_per_s, 2),
                          "error": round(pred.output_tokens_per_s / meas_tok_s - 1, 4) if meas_tok_s else None}
        if m["rates"] and clock == "wall":
            pts_m, pts_p = [], []
            for rate, res in m["rates"].items():
                pts_m.append((rate, summarize_run(policy, "rate", rate, res).slo_attainment))
                sim_res = simulate_run(policy, m["options"], cost, res, kv, free, args, m["one_pass"])
                pts_p.append((rate, summarize_run(policy, "rate", rate, sim_res).slo_attainment))
            cm, cp = rate_at_attainment(pts_m), rate_at_attainment(pts_p)
            row["slo"] = {"measured": pts_m, "predicted": pts_p, "measured_rate_at_80": asdict(cm), "predicted_rate_at_80": asdict(cp),
                          "error": round(cp.rate / cm.rate - 1, 4) if cm.rate and cp.rate else None}
        rows.append(row)
    return {"cost_model_ms": asdict(cost), "fit_steps": len(fit_samples), "fit_steps_by_kind": kinds, "rows": rows}


def markdown(report: dict) -> str:
    return "\n".join(markdown_clock(clock, a) for clock, a in report["clocks"].items())


def markdown_clock(clock: str, report: dict) -> str:
    c = report["cost_model_ms"]
    fmt = lambda v: "as prefill" if v is None else f"({v[0]:.3g}, {v[1]:.3g}, {v[2]:.3g})"  # noqa: E731
    kinds = report.get("fit_steps_by_kind") or {"three_pass": report["fit_steps"], "one_pass": 0}
    parts = []
    if kinds["three_pass"]:
        parts.append(f"{kinds['three_pass']} three-pass steps: prefill (a, b, c) = {fmt(c['prefill'])}, chunk (a, b, c) = "
                     f"{fmt(c.get('chunk'))}, decode (a, b, c) = {fmt(c['decode_small'])} ms")
    if kinds["one_pass"]:
        parts.append(f"{kinds['one_pass']} one-pass steps: (a, per token, per output row, chunk attention, decode "
                     f"attention) = ({', '.join(f'{v:.3g}' for v in c['mixed'])}) ms")
    lines = [f"**{clock} clock.** Fitted on the fit sets' engine steps: {'; '.join(parts)}.", "",
             "| policy | fit set: measured / predicted tok/s | error | validation set: measured / predicted tok/s | error | step time ratio (val) | rate at 80% SLO measured / predicted | error |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        f, v = r["fit"], r["val"]
        slo = r.get("slo")
        s = "-" if not slo else f"{slo['measured_rate_at_80']['rate'] or 0:.2f} / {slo['predicted_rate_at_80']['rate'] or 0:.2f}"
        e = "-" if not slo or slo["error"] is None else f"{100 * slo['error']:+.0f}%"
        lines.append(f"| {r['policy']} | {f['measured_tok_s']:.1f} / {f['predicted_tok_s']:.1f} | {100 * f['error']:+.0f}% | "
                     f"{v['measured_tok_s']:.1f} / {v['predicted_tok_s']:.1f} | {100 * v['error']:+.0f}% | "
                     f"{r['fit_error_validation_set']['total_ratio']} | {s} | {e} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path:
    """Measured beside predicted, per policy: saturated throughput (validation set) and, when
    swept, SLO attainment against rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    with_slo = [r for r in rows if r.get("slo")]
    fig, axes = plt.subplots(1, 2 if with_slo else 1, figsize=(11 if with_slo else 6, 4.2), squeeze=False)
    ax = axes[0][0]
    xs = range(len(rows))
    m = ax.bar([x - 0.2 for x in xs], [r["val"]["measured_tok_s"] for r in rows], 0.4, label="measured", color="tab:grey")
    p = ax.bar([x + 0.2 for x in xs], [r["val"]["predicted_tok_s"] for r in rows], 0.4, label="simulated", color="tab:blue")
    ax.bar_label(m, fmt="%.1f")
    ax.bar_label(p, fmt="%.1f")
    ax.set_xticks(list(xs), [r["policy"] for r in rows])
    ax.set_ylabel("output tokens/s (saturated, validation set)")
    ax.set_title("Engine on this CPU vs the fitted simulator")
    ax.legend()
    if with_slo:
        gx = axes[0][1]
        for i, r in enumerate(with_slo):
            color = f"C{i}"
            for key, style in (("measured", "-"), ("predicted", "--")):
                pts = [(a, b) for a, b in r["slo"][key] if b is not None]
                gx.plot([a for a, _ in pts], [100 * b for _, b in pts], style, marker="o", color=color,
                        label=f"{r['policy']} {'measured' if key == 'measured' else 'simulated'}")
        gx.axhline(80, color="grey", linestyle=":", linewidth=1)
        gx.set(xlabel="request rate (req/s, Poisson)", ylabel="SLO attainment of online requests (%)", ylim=(-2, 102),
               title="SLO attainment: measured (solid) vs simulated (dashed)")
        gx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
