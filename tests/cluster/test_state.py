"""What the ingress and the router share: slots, in-flight counts, the status body (pure Python)."""

from bucket_scheduler.cluster.ranges import RangeConfig
from bucket_scheduler.cluster.routing import ReplicaLoad
from bucket_scheduler.cluster.state import ClusterState


def test_a_replacement_replica_takes_the_slot_of_the_one_it_replaces():
    s = ClusterState(3, "bucket", RangeConfig(max_len=300))
    s.set_replicas(["a", "b", "c"])
    assert s.slots == {"a": 0, "b": 1, "c": 2} and s.ever_all_ready
    s.set_replicas(["a", "c"])  # b failed
    assert s.slots == {"a": 0, "c": 2}
    s.set_replicas(["a", "c", "d"])  # its replacement
    assert s.slots["d"] == 1
    assert [r["range"] for r in s.status()["replicas"]] == [[0, 100], [100, 200], [200, 300]]
    assert [r["id"] for r in s.status()["replicas"]] == ["a", "d", "c"]


def test_in_flight_counts_follow_routed_and_finished_requests():
    s = ClusterState(2, "bucket")
    s.set_replicas(["a", "b"])
    s.routed("t1", "a")
    s.routed("t2", "a")
    s.routed("t3", "b")
    assert dict(s.in_flight) == {"a": 2, "b": 1}
    s.finished("t1", "a")
    s.finished("t3", None)  # failed before answering: no longer in flight, not served
    assert dict(s.in_flight) == {"a": 1} and s.loads()["b"] == ReplicaLoad()
    status = {r["id"]: r for r in s.status()["replicas"]}
    assert status["a"]["requests"] == 1 and status["b"]["requests"] == 0


def test_pow2_status_gives_every_replica_the_whole_range():
    s = ClusterState(2, "pow2", RangeConfig(max_len=512))
    s.set_replicas(["x", "y"])
    assert [r["range"] for r in s.status()["replicas"]] == [[0, 512], [0, 512]]
    assert not ClusterState(2, "bucket").ever_all_ready


def test_queued_work_is_prompt_tokens_until_the_first_token_then_a_decode_row():
    s = ClusterState(2, "bucket")
    s.set_replicas(["a", "b"])
    s.routed("t1", "a", 1000)
    s.routed("t2", "b", 10)
    s.routed("t3", "b", 10)
    assert s.loads() == {"a": ReplicaLoad(1000, 0), "b": ReplicaLoad(20, 0)}
    s.started("t1")  # its first token came back: prefill done
    s.started("t1")  # (once only)
    assert s.loads()["a"] == ReplicaLoad(0, 1)
    s.finished("t1", "a")
    s.finished("t2", None)  # failed before starting: its prompt tokens leave the queue
    assert s.loads() == {"a": ReplicaLoad(), "b": ReplicaLoad(10, 0)}
    s.started("t3")
    s.finished("t3", "b")
    assert s.loads()["b"] == ReplicaLoad() and not s.in_flight
