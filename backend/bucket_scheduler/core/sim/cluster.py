"""The event loop: requests arrive, a router picks a GPU, GPUs step, KV moves between pools.

A Deployment is a list of colocated instances (data parallel, one model copy per GPU),
or a prefill pool plus a decode pool (disaggregated).  Each arrival goes to the
colocated instance with the fewest outstanding requests, or to the prefill instance
expected to be free first (the step in progress plus its queued prompt tokens); a
finished prefill is sent to the decode instance with the fewest outstanding requests
and lands there after the KV transfer time.

Events are (time, seq, kind, payload) in one heap; each instance has at most one step
event pending.  A step's effects (tokens, finishes, handoffs) carry its end time.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from .instance import ColocatedInstance, DecodeInstance, Instance, PrefillInstance, SimRecord
from .workload import SimRequestSpec


@dataclass
class SimRun:
    """What a simulated run produced: the per-request records and per-GPU counters."""

    records: list[SimRecord]
    makespan_s: float
    gpus: list[dict] = field(default_factory=list)

    @property
    def output_tokens(self) -> int:
        return sum(r.generated for r in self.records)


class Deployment:
    def __init__(self, colocated: list[ColocatedInstance] | None = None,
                 prefill: list[PrefillInstance] | None = None, decode: list[DecodeInstance] | None = None,
                 transfer_s=lambda prompt_len: 0.0):
        self.colocated = colocated or []
        self.prefill = prefill or []
        self.decode = decode or []
        if bool(self.colocated) == bool(self.prefill or self.decode):
            raise ValueError("a deployment is either colocated instances or a prefill and a decode pool")
        if not self.colocated and not (self.prefill and self.decode):
            raise ValueError("a disaggregated deployment needs at least one prefill and one decode instance")
        self.transfer_s = transfer_s

    @property
    def instances(self) -> list[Instance]:
        return self.colocated + self.prefill + self.decode

    def entry(self, now: float) -> Instance:
        if self.colocated:
            return min(self.colocated, key=lambda i: i.outstanding)
        return min(self.prefill, key=lambda i: i.expected_wait_ms(now))

    def decode_target(self) -> DecodeInstance:
        return min(self.decode, key=lambda i: i.outstanding)


def simulate(deploy: Deployment, specs: list[SimRequestSpec], max_events: int = 50_000_000) -> SimRun:
    heap: list = []
    seq = itertools.count()
    pending: set[int] = set()  # id() of instances with a step event queued
    records = [SimRecord(s) for s in specs]

    def wake(inst: Instance, t: float) -> None:
        if id(inst) not in pending:
            pending.add(id(inst))
            heapq.heappush(heap, (t, next(seq), "step", inst))

    def handoff(rec: SimRecord, t: float) -> None:
        heapq.heappush(heap, (t + deploy.transfer_s(rec.spec.prompt_len), next(seq), "kv", rec))

    for inst in deploy.prefill:
        inst.handoff = handoff
    for rec in records:
        heapq.heappush(heap, (rec.spec.arrival_s, next(seq), "arrive", rec))
    now = 0.0
    events = 0
    while heap:
        events += 1
        if events > max_events:
            raise RuntimeError(f"simulation did not settle after {max_events} events")
        now, _, kind, obj = heapq.heappop(heap)
        if kind == "arrive" or kind == "kv":
            inst = deploy.entry(now) if kind == "arrive" else deploy.decode_target()
            if inst.submit(obj, now):
                wake(inst, now)
            continue
        pending.discard(id(obj))
        end = obj.step(now)
        if end is not None:
            wake(obj, max(end, now + 1e-9))
        else:
            t = obj.idle_wakeup(now)
            if t is not None and (heap or obj.sched.has_work()):
                wake(obj, t)
    gpus = [{"name": i.name, "role": i.role, "busy_s": round(i.busy_s, 3), "steps": i.steps,
             "preemptions": i.preemptions, "utilization": round(i.busy_s / now, 4) if now > 0 else 0.0,
             "prefill_padding_efficiency": round(i.prefill_useful / i.prefill_computed, 4) if i.prefill_computed else None}
            for i in deploy.instances]
    return SimRun(records, now, gpus)
