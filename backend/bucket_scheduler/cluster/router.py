"""Ray Serve request routers for the Triton replicas.

- BucketRouter: each replica holds a slot, each slot a prompt-length range (ranges.py, the
  core's boundary logic). A request goes to its range's replica unless that replica's queued
  work (prompt tokens still to prefill + generating rows, state.py) exceeds the least loaded
  one's by `imbalance` typical prompts; then the least loaded first (routing.rank_replicas).
- Pow2Router: Ray's own power-of-two-choices router (the baseline), unchanged but for the two
  things both routers do: skip the replica a retried request failed on, and tell the shared
  state (state.py) where each request went.

The ingress passes `length`, `avoid` and `token` as keyword arguments of generate(); routers
read them from the pending request.
"""

from __future__ import annotations

from typing import List, Optional

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica

from .ranges import RangeConfig
from .routing import ReplicaLoad, RoutePolicy, rank_replicas
from .state import ClusterState, shared_state

BUCKET_ROUTER = "bucket_scheduler.cluster.router:BucketRouter"
POW2_ROUTER = "bucket_scheduler.cluster.router:Pow2Router"


def _rid(replica) -> str:
    rid = getattr(replica, "replica_id", replica)
    return getattr(rid, "unique_id", str(rid))


def _kwargs(pending_request: Optional[PendingRequest]) -> dict:
    return dict(getattr(pending_request, "kwargs", None) or {}) if pending_request is not None else {}


class _Shared:
    """Both routers: the shared state, the retry's avoid, and where requests went."""

    state: ClusterState

    def initialize_state(self, state_key: str = "bucketserve", replicas: int = 1, router: str = "bucket",
                         imbalance: float = 1, max_len: int = 2048, min_observations: int = 16, split: str = "padding",
                         **_ignored):
        self.state = shared_state(state_key, replicas, router,
                                  RangeConfig(max_len=max_len, min_observations=min_observations, split=split))
        self.imbalance = imbalance

    def update_replicas(self, replicas: List[RunningReplica]):
        super().update_replicas(replicas)
        self.state.set_replicas([_rid(r) for r in replicas])

    def _without_avoided(self, candidates: List[RunningReplica], pending_request) -> List[RunningReplica]:
        avoid = _kwargs(pending_request).get("avoid")
        kept = [r for r in candidates if _rid(r) != avoid]
        return kept or candidates  # the only replica left: let it answer (with its clear error) rather than hang

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult):
        super().on_request_routed(pending_request, replica_id, result)
        kwargs = _kwargs(pending_request)
        self.state.routed(kwargs.get("token"), _rid(replica_id), int(kwargs.get("length") or 0))


class BucketRouter(_Shared, RequestRouter):
    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        candidates = self._without_avoided(candidate_replicas, pending_request)
        if pending_request is None or len(candidates) == 1:
            return [candidates]
        slot = self.state.ranges.group_of(int(_kwargs(pending_request).get("length") or 0))
        by_id = {_rid(r): r for r in candidates}
        slots = self.state.slots
        loads = self.state.loads()
        live = {rid: loads.get(rid, ReplicaLoad()) for rid in by_id}
        own = next((rid for rid in live if slots.get(rid) == slot), None)
        margin = self.imbalance * max(self.state.typical_length(), 1.0)
        ranks = rank_replicas(own, live, RoutePolicy(margin=margin), order=slots)
        return [[by_id[rid] for rid in rank] for rank in ranks]


class Pow2Router(_Shared, PowerOfTwoChoicesRequestRouter):
    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        return await super().choose_replicas(self._without_avoided(candidate_replicas, pending_request), pending_request)
