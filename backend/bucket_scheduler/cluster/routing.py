"""The bucket router's decision, as a pure function of the replicas' queued work.

A replica's queued work is what it still has to do for the requests routed to it: the prompt
tokens of requests whose first token has not come back yet (their prefill, the bulk of a step's
cost) plus `decode_weight` tokens for each request already generating (a decode row costs about
one token per step for the rest of its answer). A request goes to its range's replica unless
that replica's queued work exceeds the least loaded replica's by more than `margin` tokens;
then the least loaded is tried first. Counting queued prefill tokens, not requests, is what
keeps the replica of long prompts from queueing while the replica of short ones idles.
"""

from __future__ import annotations

from dataclasses import dataclass

# Tokens of work a generating request stands for (its remaining decode steps, roughly).
DECODE_WEIGHT = 32


@dataclass(frozen=True)
class ReplicaLoad:
    prefill_tokens: int = 0  # estimated prompt tokens routed here whose first token has not come back
    decode_rows: int = 0  # requests here past their first token

    def work(self, decode_weight: float = DECODE_WEIGHT) -> float:
        return self.prefill_tokens + decode_weight * self.decode_rows


@dataclass(frozen=True)
class RoutePolicy:
    margin: float  # tokens of queued work the range's replica may lead the least loaded by
    decode_weight: float = DECODE_WEIGHT


def rank_replicas(own: str | None, loads: dict[str, ReplicaLoad], policy: RoutePolicy,
                  order: dict[str, int] | None = None) -> list[list[str]]:
    """Replica ids to try, in ranks (Serve's choose_replicas shape): the range's replica `own`
    alone first when it is not overloaded, then the others by queued work; else all by queued
    work. `order` breaks ties (the replicas' slots) so that equal loads route the same way."""
    order = order or {}
    by_work = sorted(loads, key=lambda rid: (loads[rid].work(policy.decode_weight), order.get(rid, 1 << 30), rid))
    if own not in loads or len(by_work) == 1:
        return [by_work]  # no range replica (it is being replaced): the least loaded serves meanwhile
    least = loads[by_work[0]].work(policy.decode_weight)
    if loads[own].work(policy.decode_weight) - least > policy.margin:
        return [by_work]
    return [[own], [rid for rid in by_work if rid != own]]
