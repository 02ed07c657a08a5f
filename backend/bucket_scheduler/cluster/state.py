"""What the ingress and its handle's request router share, in the ingress's process.

A Serve handle runs its request router inside the process that owns the handle (on a router
thread), so the ingress and the router meet here: the ingress observes prompt lengths (the
ranges follow them) and reports finished requests; the router reports which replicas exist,
which slot (range) each holds and where every request went. Guarded by a lock: two threads.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from .ranges import LengthRanges, RangeConfig
from .routing import ReplicaLoad


@dataclass
class ClusterState:
    replicas: int
    router: str  # "bucket" or "pow2"
    range_config: RangeConfig = field(default_factory=RangeConfig)

    def __post_init__(self):
        self.ranges = LengthRanges(self.replicas, self.range_config)
        self._lock = threading.Lock()
        self.slots: dict[str, int] = {}  # replica id -> range index
        self.in_flight: Counter[str] = Counter()
        self.prefill: Counter[str] = Counter()  # prompt tokens routed, first token not back yet
        self.decoding: Counter[str] = Counter()  # requests past their first token
        self.served: Counter[str] = Counter()
        self._where: dict[str, list] = {}  # request token -> [replica id, prompt tokens, started]
        self.ever_all_ready = False

    # --- router side ----------------------------------------------------------

    def set_replicas(self, ids: list[str]) -> None:
        """Keep each live replica's slot; a new replica takes the lowest free one (the slot of
        the replica it replaces)."""
        with self._lock:
            live = set(ids)
            self.slots = {rid: s for rid, s in self.slots.items() if rid in live}
            for rid in sorted(live - set(self.slots)):
                used = set(self.slots.values())
                self.slots[rid] = next(s for s in range(len(live) + len(used) + 1) if s not in used)
            if len(self.slots) >= self.replicas:
                self.ever_all_ready = True

    def routed(self, token: str | None, rid: str, length: int = 0) -> None:
        length = max(0, int(length))
        with self._lock:
            self.in_flight[rid] += 1
            self.prefill[rid] += length
            if token:
                self._where[token] = [rid, length, False]

    def loads(self) -> dict[str, ReplicaLoad]:
        """Queued work per live replica: prompt tokens still to prefill, rows generating."""
        with self._lock:
            return {rid: ReplicaLoad(self.prefill[rid], self.decoding[rid]) for rid in self.slots}

    def typical_length(self) -> float:
        return self.ranges.mean()

    # --- ingress side ---------------------------------------------------------

    def started(self, token: str) -> None:
        """The request's first token came back: its prefill is done, it is a decode row now."""
        with self._lock:
            where = self._where.get(token)
            if where is None or where[2]:
                return
            rid, length, _ = where
            where[2] = True
            self.prefill[rid] = max(0, self.prefill[rid] - length)
            self.decoding[rid] += 1

    def finished(self, token: str, answered_by: str | None) -> None:
        with self._lock:
            rid, length, started = self._where.pop(token, (None, 0, False))
            if rid is not None and self.in_flight[rid] > 0:
                self.in_flight[rid] -= 1
                if started:
                    self.decoding[rid] = max(0, self.decoding[rid] - 1)
                else:
                    self.prefill[rid] = max(0, self.prefill[rid] - length)
                if self.in_flight[rid] == 0:
                    del self.in_flight[rid]
                    self.prefill.pop(rid, None)
                    self.decoding.pop(rid, None)
            if answered_by:
                self.served[answered_by] += 1

    def status(self) -> dict:
        ranges = self.ranges.ranges()
        full = [0, self.range_config.max_len]
        with self._lock:
            out = []
            for rid, slot in sorted(self.slots.items(), key=lambda kv: kv[1]):
                rng = list(ranges[slot]) if self.router == "bucket" and slot < len(ranges) else full
                out.append({"id": rid, "range": rng, "requests": self.served[rid], "in_flight": self.in_flight[rid]})
        return {"router": self.router, "replicas": out}


_STATES: dict[str, ClusterState] = {}
_STATES_LOCK = threading.Lock()


def shared_state(key: str, replicas: int, router: str, range_config: RangeConfig | None = None) -> ClusterState:
    with _STATES_LOCK:
        state = _STATES.get(key)
        if state is None:
            state = _STATES[key] = ClusterState(replicas, router, range_config or RangeConfig())
        return state
