"""bucketserve-bench scheduler: decision time of one schedule() call with 10, 1,000 and 10,000 waiting requests.

    bucketserve-bench scheduler [--trace data/azure_llm_2023_conv.csv]
        [--policies bucket,static,continuous,uellm] [--steps 2000] [--quick] [--json]

Steady state: the queue is filled to N, then every step one running request
finishes and one new request arrives, so N stays put while the scheduler keeps
deciding (admissions, refills, boundary moves).  Lengths come from the trace's
ContextTokens / GeneratedTokens when given, else from a fixed-seed log-normal
mix.  Reports p50 / p99 / mean / max of StepStats.decision_us (wall clock, as the
engine sees it) and the ratio of p99 to the 1 ms goal (a benchmark, not a
test: the goal is printed, not asserted), plus p50 / p99 of the thread's CPU
time per call, which other processes on a shared machine do not inflate.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

from bucket_scheduler.core.factory import make_scheduler
from bucket_scheduler.core.memory import GIB, FixedProbe, MemoryPlanner
from bucket_scheduler.core.replay import LLAMA2_13B
from bucket_scheduler.core.request import Request, RequestClass
from bucket_scheduler.core.stats import percentile
from bucket_scheduler.core.trace import load_trace

GOAL_US = 1000.0


def lengths(trace: str | None, n: int, seed: int = 0) -> list[tuple[int, int]]:
    rnd = random.Random(seed)
    if trace:
        rows = [(r.prompt_len, max(1, r.output_len)) for r in load_trace(trace)]
        return [rnd.choice(rows) for _ in range(n)]
    return [(min(14000, int(rnd.lognormvariate(6.8, 0.9))) + 1, min(1000, int(rnd.lognormvariate(4.8, 1.0))) + 1)
            for _ in range(n)]


def bench(policy: str, n_waiting: int, steps: int, pool: list[tuple[int, int]], online_share: float) -> dict:
    planner = MemoryPlanner(LLAMA2_13B, FixedProbe(48 * GIB))
    sched = make_scheduler(policy, planner, 16384, 64)
    rnd = random.Random(1)
    k = 0

    def new_request(now: float) -> Request:
        nonlocal k
        p, g = pool[k % len(pool)]
        online = rnd.random() < online_share
        r = Request(f"q{k}", p, g, now, req_class=RequestClass.ONLINE if online else RequestClass.OFFLINE,
                    slo_ttft_s=2.0 if online else None)
        k += 1
        return r

    now = 0.0
    for _ in range(n_waiting):
        sched.add(new_request(now))
        now += 1e-4
    samples, cpu = [], []
    for step in range(steps + 50):
        c0 = time.thread_time_ns()
        out = sched.schedule(now)
        c1 = time.thread_time_ns()
        if step >= 50:  # warm-up: first batch, first boundary placement
            samples.append(out.stats.decision_us)
            cpu.append((c1 - c0) / 1000.0)
        for r in out.running:
            sched.on_tokens(r.request_id, 1, now)
        if out.running:
            victim = out.running[rnd.randrange(len(out.running))]
            sched.finish(victim.request_id, now)
        while sched.num_waiting < n_waiting:
            sched.add(new_request(now))
        now += 0.02
    p99 = percentile(samples, 99)
    return {
        "policy": policy,
        "waiting": n_waiting,
        "p50_us": round(percentile(samples, 50), 1),
        "p99_us": round(p99, 1),
        "mean_us": round(statistics.fmean(samples), 1),
        "max_us": round(max(samples), 1),
        "p99_vs_goal": round(p99 / GOAL_US, 3),
        "cpu_p50_us": round(percentile(cpu, 50), 1),
        "cpu_p99_us": round(percentile(cpu, 99), 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bucketserve-bench scheduler", description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", default=None)
    ap.add_argument("--policies", default="bucket,static,continuous,uellm")
    ap.add_argument("--sizes", default="10,1000,10000")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--online-share", type=float, default=0.3)
    ap.add_argument("--quick", action="store_true", help="10 and 1,000 waiting, 200 steps: seconds")
    ap.add_argument("--json", action="store_true", help="the results as one JSON line, the last line of stdout")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.steps = "10,1000", min(args.steps, 200)
    pool = lengths(args.trace, 20000)
    results = []
    for policy in args.policies.split(","):
        for n in (int(x) for x in args.sizes.split(",")):
            res = bench(policy, n, args.steps, pool, args.online_share)
            results.append(res)
            print(f"{policy:11s} waiting={n:6d}  p50 {res['p50_us']:8.1f} us  p99 {res['p99_us']:8.1f} us  "
                  f"mean {res['mean_us']:8.1f} us  max {res['max_us']:9.1f} us  p99/goal(1 ms) {res['p99_vs_goal']:.3f}  "
                  f"| cpu p50 {res['cpu_p50_us']:7.1f} us  p99 {res['cpu_p99_us']:7.1f} us",
                  file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(json.dumps({"goal_us": GOAL_US, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
