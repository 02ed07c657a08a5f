"""The bucket router's decision (routing.rank_replicas): the range's replica unless its queued
work leads the least loaded one's by more than the margin (pure Python)."""

from bucket_scheduler.cluster.routing import ReplicaLoad, RoutePolicy, rank_replicas

POLICY = RoutePolicy(margin=300, decode_weight=32)


def test_the_ranges_replica_first_while_its_queue_is_within_the_margin():
    loads = {"short": ReplicaLoad(0, 2), "long": ReplicaLoad(300, 0)}  # 64 vs 300 tokens queued
    assert rank_replicas("long", loads, POLICY) == [["long"], ["short"]]
    assert rank_replicas("short", loads, POLICY) == [["short"], ["long"]]


def test_queued_prompt_tokens_past_the_margin_send_the_request_to_the_least_loaded():
    loads = {"short": ReplicaLoad(40, 1), "long": ReplicaLoad(1024, 0)}  # two long prompts queued
    assert rank_replicas("long", loads, POLICY) == [["short", "long"]]


def test_requests_count_by_tokens_not_by_number():
    """Ten short prompts queued weigh less than two long ones: the long range hands over,
    the short one keeps its requests."""
    loads = {"short": ReplicaLoad(10 * 20, 0), "long": ReplicaLoad(2 * 500, 0)}
    assert rank_replicas("long", loads, POLICY)[0] == ["short", "long"]
    assert rank_replicas("short", loads, POLICY)[0] == ["short"]


def test_generating_rows_count_by_the_decode_weight():
    loads = {"a": ReplicaLoad(0, 20), "b": ReplicaLoad(0, 0)}  # 20 rows x 32 = 640 tokens of work
    assert rank_replicas("a", loads, POLICY) == [["b", "a"]]
    assert rank_replicas("a", loads, RoutePolicy(margin=300, decode_weight=8)) == [["a"], ["b"]]


def test_no_range_replica_least_loaded_first_and_ties_follow_the_slot_order():
    loads = {"x": ReplicaLoad(100, 0), "y": ReplicaLoad(0, 0), "z": ReplicaLoad(0, 0)}
    assert rank_replicas(None, loads, POLICY, order={"z": 0, "y": 1, "x": 2}) == [["z", "y", "x"]]
    assert rank_replicas("gone", loads, POLICY, order={"y": 0, "z": 1}) == [["y", "z", "x"]]
    assert rank_replicas("x", {"x": ReplicaLoad(10**6, 0)}, POLICY) == [["x"]]
