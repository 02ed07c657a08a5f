"""Replay a request-length trace through a scheduler on the cost-model clock.

    python -m bucket_scheduler.replay --trace data/azure_llm_2023_conv.csv --policy bucket [--json]

The trace is a CSV with TIMESTAMP, ContextTokens, GeneratedTokens (the Azure LLM
inference traces).  Each row becomes a request arriving at its timestamp
(relative to the first row, times --time-scale) with prompt_len = ContextTokens
and max_new_tokens = GeneratedTokens (or --max-new-tokens, the request then
stops at min(GeneratedTokens, that cap), as if EOS came).  The driver behaves
like the engine: every step it calls schedule(now), prefills out.chunks (whole
prompts, or chunks under the token budget), decodes the rest of out.running (not those
still prefilling), advances the clock by CostModel.step_s (clock.py),
then reports one token per running request and finishes those that are done.

Padding efficiency = useful / computed token slots over all prefill and decode
steps of a padded runtime (clock.SlotCounter).  Memory: a model shape
(default Llama-2-13B: 40 layers, 40 KV heads, head dim 128, fp16) and a fixed
free-memory probe (default 48 GiB, what is left of an 80 GB GPU next to 13B
fp16 weights).  Requests are offline unless --online-share marks a random
share online with a TTFT SLO (--slo-ttft-s); the result then reports the share
of online requests whose first token came within it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict, dataclass, field

from .clock import CostModel, SlotCounter
from .factory import POLICIES, make_scheduler
from .memory import GIB, FixedProbe, KVSpec, MemoryPlanner
from .request import Request, RequestClass
from .stats import percentile
from .trace import TraceRow, load_trace

LLAMA2_13B = KVSpec(num_layers=40, num_kv_heads=40, head_dim=128, dtype_bytes=2)


@dataclass
class ReplayResult:
    policy: str
    requests: int
    finished: int
    rejected: int
    padding_efficiency: float
    prefill_padding_efficiency: float
    decode_padding_efficiency: float
    batches: int  # steps that admitted at least one request (prefill batches)
    mean_batch_size: float  # running sequences per decode step
    max_planned_kv_bytes: int
    budget_bytes: int  # the smallest budget seen
    decision_us_p50: float
    decision_us_p99: float
    steps: int
    preemptions: int
    makespan_s: float
    output_tokens_per_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    online: int = 0  # requests marked online (--online-share)
    online_ttft_slo_attainment: float | None = None  # share of online requests with TTFT <= their SLO
    options: dict = field(default_factory=dict)


def _pct(values: list[float], q: float) -> float:
    return percentile(values, q) or 0.0


def replay(
    rows: list[TraceRow],
    policy: str,
    options: dict | None = None,
    kv: KVSpec = LLAMA2_13B,
    free_bytes: int = 48 * GIB,
    memory_fraction: float = 0.9,
    max_model_len: int = 16384,
    max_num_seqs: int = 64,
    cost: CostModel | None = None,
    max_new_tokens: int | None = None,
    idle_tick_s: float = 0.01,
    online_share: float = 0.0,
    slo_ttft_s: float = 2.0,
    seed: int = 0,
) -> ReplayResult:
    options = dict(options or {})
    cost = cost or CostModel()
    planner = MemoryPlanner(kv, FixedProbe(free_bytes), memory_fraction=memory_fraction)
    sched = make_scheduler(policy, planner, max_model_len, max_num_seqs, **options)
    stop_at: dict[str, int] = {}
    reqs: list[Request] = []
    prefill_slots, decode_slots = SlotCounter(), SlotCounter()
    decisions: list[float] = []
    batches = decode_steps = decode_seqs = preemptions = rejected = 0
    max_planned, min_budget = 0, None
    out_tokens = 0
    now, i, n = 0.0, 0, len(rows)
    next_wakeup = getattr(sched, "next_wakeup", None)
    idle_guard = 0
    pick = random.Random(seed)
    while i < n or sched.has_work():
        while i < n and rows[i].arrival_s <= now:
            row = rows[i]
            mnt = max(1, row.output_len) if max_new_tokens is None else max_new_tokens
            online = online_share > 0 and pick.random() < online_share
            r = Request(f"r{i}", max(1, row.prompt_len), mnt, row.arrival_s,
                        req_class=RequestClass.ONLINE if online else RequestClass.OFFLINE,
                        slo_ttft_s=slo_ttft_s if online else None)
            stop_at[r.request_id] = min(max(1, row.output_len), mnt)
            reqs.append(r)
            if not sched.add(r):
                rejected += 1
            i += 1
        out = sched.schedule(now)
        st = out.stats
        decisions.append(st.decision_us)
        max_planned = max(max_planned, st.planned_kv_bytes)
        min_budget = st.budget_bytes if min_budget is None else min(min_budget, st.budget_bytes)
        preemptions += len(out.preempted)
        if not out.running:
            nxt = rows[i].arrival_s if i < n else None
            wake = next_wakeup(now) if next_wakeup else None
            if sched.num_waiting and wake is None:
                wake = now + idle_tick_s  # e.g. waiting for memory: poll
                idle_guard += 1
                if nxt is None and idle_guard > 100_000:
                    break  # nothing can ever be admitted
            cands = [t for t in (nxt, wake) if t is not None]
            if not cands:
                break
            t = min(cands)
            now = t if t > now else now + idle_tick_s
            continue
        idle_guard = 0
        if out.chunks:
            batches += 1
        new_ids = {r.request_id for r in out.prefill}
        pre_lens = [c.tokens for c in out.chunks]  # whole prompts, or chunks under the token budget
        dec_lens = [r.seq_len for r in out.running if r.request_id not in new_ids and not r.is_prefilling]
        prefill_slots.add(pre_lens)
        decode_slots.add(dec_lens)
        if dec_lens:
            decode_steps += 1
            decode_seqs += len(dec_lens)
        now += cost.step_s(pre_lens, dec_lens)
        for r in out.running:
            if r.is_prefilling:
                continue  # no token before its last chunk
            sched.on_tokens(r.request_id, 1, now)
            out_tokens += 1
            if r.num_generated >= stop_at[r.request_id]:
                sched.finish(r.request_id, now)
    ttfts = [r.first_token_time - r.arrival_time for r in reqs if r.first_token_time is not None]
    onl = [r for r in reqs if r.is_online and r.state.value != "rejected"]
    met = sum(r.first_token_time is not None and r.first_token_time - r.arrival_time <= r.slo_ttft_s for r in onl)
    total = SlotCounter(prefill_slots.useful + decode_slots.useful, prefill_slots.computed + decode_slots.computed)
    return ReplayResult(
        policy=policy,
        requests=len(reqs),
        finished=sum(r.state.value == "finished" for r in reqs),
        rejected=rejected,
        padding_efficiency=round(total.efficiency, 4),
        prefill_padding_efficiency=round(prefill_slots.efficiency, 4),
        decode_padding_efficiency=round(decode_slots.efficiency, 4),
        batches=batches,
        mean_batch_size=round(decode_seqs / decode_steps, 2) if decode_steps else 0.0,
        max_planned_kv_bytes=max_planned,
        budget_bytes=min_budget or 0,
        decision_us_p50=round(_pct(decisions, 50), 1),
        decision_us_p99=round(_pct(decisions, 99), 1),
        steps=len(decisions),
        preemptions=preemptions,
        makespan_s=round(now, 2),
        output_tokens_per_s=round(out_tokens / now, 1) if now > 0 else 0.0,
        ttft_p50_s=round(_pct(ttfts, 50), 3),
        ttft_p99_s=round(_pct(ttfts, 99), 3),
        online=len(onl),
        online_ttft_slo_attainment=round(met / len(onl), 4) if onl else None,
        options=options,
    )


def _parse_option(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option expects key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bucket_scheduler.replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", required=True, help="CSV with TIMESTAMP, ContextTokens, GeneratedTokens")
    ap.add_argument("--policy", required=True, choices=sorted(POLICIES))
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--limit", type=int, default=None, help="replay only the first N rows")
    ap.add_argument("--time-scale", type=float, default=1.0, help="multiply arrival times (0.5 = twice the rate)")
    ap.add_argument("--max-model-len", type=int, default=16384)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=None, help="max_tokens of every request (default: its trace length)")
    ap.add_argument("--free-gib", type=float, default=48.0, help="free accelerator memory the probe reports")
    ap.add_argument("--memory-fraction", type=float, default=0.9)
    ap.add_argument("--kv", default="40,40,128,2", help="layers,kv_heads,head_dim,dtype_bytes (default Llama-2-13B fp16)")
    ap.add_argument("--online-share", type=float, default=0.0,
                    help="mark this share of requests online (fixed-seed random pick), with --slo-ttft-s")
    ap.add_argument("--slo-ttft-s", type=float, default=2.0, help="TTFT SLO of online requests")
    ap.add_argument("--paged-cost", action="store_true", help="step time from actual lengths, not padded slots")
    ap.add_argument("--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                    help="policy option for make_scheduler (repeatable; JSON values)")
    args = ap.parse_args(argv)
    layers, heads, dim, nbytes = (int(x) for x in args.kv.split(","))
    rows = load_trace(args.trace, args.limit, args.time_scale)
    res = replay(
        rows,
        args.policy,
        dict(args.option),
        kv=KVSpec(layers, heads, dim, nbytes),
        free_bytes=int(args.free_gib * GIB),
        memory_fraction=args.memory_fraction,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        cost=CostModel(padded=not args.paged_cost),
        max_new_tokens=args.max_new_tokens,
        online_share=args.online_share,
        slo_ttft_s=args.slo_ttft_s,
    )
    if args.json:
        print(json.dumps(asdict(res)))
    else:
        for k, v in asdict(res).items():
            print(f"{k:28s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
