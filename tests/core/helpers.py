"""Helpers for core tests: a tiny model shape, fixed memory and a token-by-token driver."""

from __future__ import annotations

from bucket_scheduler.core.factory import make_scheduler
from bucket_scheduler.core.memory import KVSpec, MemoryPlanner, ScriptedProbe
from bucket_scheduler.core.request import Request, RequestClass

POLICIES = ["bucket", "static", "continuous", "uellm"]
KV = KVSpec(num_layers=2, num_kv_heads=2, head_dim=8, dtype_bytes=2)  # 128 bytes per token


def planner(free_bytes: int = 1 << 30, fraction: float = 0.9, probe=None) -> MemoryPlanner:
    return MemoryPlanner(KV, probe or ScriptedProbe([free_bytes]), memory_fraction=fraction)


def req(rid, prompt=100, new=10, t=0.0, online=False, **kw) -> Request:
    cls = RequestClass.ONLINE if online else RequestClass.OFFLINE
    return Request(str(rid), prompt, new, t, req_class=cls, **kw)


def run_to_end(sched, now: float = 0.0, dt: float = 0.01, max_steps: int = 100_000, on_step=None):
    """Drive like an engine: one token per running request per step; finish at max_new_tokens."""
    steps = 0
    while sched.has_work() and steps < max_steps:
        out = sched.schedule(now)
        if on_step:
            on_step(out, now)
        for r in out.running:
            if r.is_prefilling:
                continue  # prefilled in chunks: no token before its last chunk
            sched.on_tokens(r.request_id, 1, now)
            if r.num_generated >= r.max_new_tokens:
                sched.finish(r.request_id, now)
        now += dt
        steps += 1
    return steps


def make(policy, max_model_len=4096, max_num_seqs=8, free=1 << 30, probe=None, **opts):
    if policy == "static":
        opts.setdefault("max_queue_delay_s", 0.0)
    return make_scheduler(policy, planner(free, probe=probe), max_model_len, max_num_seqs, **opts)
