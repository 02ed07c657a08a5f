"""Behaviour every policy shares, and the rules that make each one what it is."""

import pytest

from bucket_scheduler.core.factory import make_scheduler, policy_options
from bucket_scheduler.core.memory import ScriptedProbe
from bucket_scheduler.core.request import RequestState

from .helpers import POLICIES, make, planner, req, run_to_end


def test_every_request_finishes_exactly_once(policy):
    s = make(policy, max_num_seqs=4)
    rs = [req(i, prompt=50 + 37 * i % 900, new=1 + i % 7, t=0.0, online=i % 3 == 0) for i in range(40)]
    assert all(s.add(r) for r in rs)
    admitted = []

    def check(out, now):
        admitted.extend(r.request_id for r in out.prefill)
        assert len(out.running) <= 4
        assert out.stats.planned_kv_bytes <= out.stats.budget_bytes
        assert {r.request_id for r in out.prefill} <= {r.request_id for r in out.running}

    run_to_end(s, on_step=check)
    assert sorted(admitted) == sorted(r.request_id for r in rs)
    assert all(r.state is RequestState.FINISHED for r in rs)
    assert not s.has_work() and s.num_waiting == 0 and s.num_running == 0


def test_reject_too_long_for_model(policy):
    s = make(policy, max_model_len=4096)
    r = req("x", prompt=5000, new=128)
    assert s.add(r) is False
    assert r.state is RequestState.REJECTED
    assert r.reject_reason == "prompt 5000 + max_tokens 128 exceeds max_model_len 4096"
    assert not s.has_work()


def test_reject_never_fits_memory(policy):
    s = make(policy, free=100 * 128)  # budget: 90 tokens of KV
    r = req("x", prompt=80, new=20)
    assert s.add(r) is False
    assert "exceeds memory budget" in r.reject_reason
    assert s.add(req("y", prompt=60, new=20)) is True


def test_reject_duplicate_and_empty(policy):
    s = make(policy)
    assert s.add(req("a"))
    dup = req("a")
    assert not s.add(dup) and "duplicate" in dup.reject_reason
    empty = req("e", prompt=0)
    assert not s.add(empty) and empty.reject_reason == "prompt is empty"


def test_cancel_waiting_and_running(policy):
    s = make(policy, max_num_seqs=2)
    rs = [req(i, prompt=100, new=50) for i in range(5)]
    for r in rs:
        s.add(r)
    out = s.schedule(0.0)
    running = out.running[0]
    waiting = next(r for r in rs if r.state is RequestState.WAITING)
    s.cancel(running.request_id, 0.1)
    s.cancel(waiting.request_id, 0.1)
    s.cancel("nope", 0.1)  # unknown ids are ignored
    assert running.state is RequestState.CANCELLED and waiting.state is RequestState.CANCELLED
    assert s.num_waiting + s.num_running == 3
    run_to_end(s, now=0.2)
    assert sum(r.state is RequestState.FINISHED for r in rs) == 3


def test_budget_shrink_preempts_latest_admitted(policy):
    probe = ScriptedProbe([1 << 30])
    s = make_scheduler(policy, planner(probe=probe), 4096, 8, **({"max_queue_delay_s": 0.0} if policy == "static" else {}))
    rs = [req(i, prompt=100, new=100, t=i * 1e-3) for i in range(6)]
    for r in rs:
        s.add(r)
    out = s.schedule(1.0)
    first = list(out.running)
    assert len(first) >= 2
    # room for exactly two sequences of 200 tokens (padded accounting) at 128 bytes/token
    probe.set(int(2 * 200 * 128 / 0.9) + 1)
    out = s.schedule(1.1)
    assert [r.request_id for r in out.running] == [r.request_id for r in first[:2]]
    assert [r.request_id for r in out.preempted] == [r.request_id for r in reversed(first[2:])]
    assert all(r.state is RequestState.WAITING and r.times_preempted == 1 for r in out.preempted)
    assert out.stats.planned_kv_bytes <= out.stats.budget_bytes
    assert not out.prefill


def test_unknown_policy_and_option():
    with pytest.raises(ValueError, match="unknown scheduling policy"):
        make_scheduler("fifo", planner(), 4096, 8)
    with pytest.raises(ValueError, match="max_batch_size"):
        make_scheduler("static", planner(), 4096, 8, max_batch_sise=4)
    assert set(POLICIES) == {"bucket", "static", "continuous", "uellm"}
    assert policy_options("static") == {"max_batch_size": 8, "max_queue_delay_s": 0.1,
                                        "max_num_batched_tokens": None, "chunked_prefill": False}


def test_static_waits_for_batch_or_delay_then_runs_to_completion():
    s = make_scheduler("static", planner(), 4096, 16, max_batch_size=4, max_queue_delay_s=0.5)
    s.add(req(0, t=0.0))
    assert s.schedule(0.1).is_empty  # 1 < 4 queued and only 0.1 s waited
    assert len(s.schedule(0.5).prefill) == 1  # delay reached
    for i in range(1, 7):
        s.add(req(i, t=0.6))
    out = s.schedule(0.6)
    assert not out.prefill and len(out.running) == 1  # nothing joins a running static batch
    s.finish("0", 0.7)
    out = s.schedule(0.7)
    assert [r.request_id for r in out.prefill] == ["1", "2", "3", "4"]  # B=4, first come first served


def test_continuous_admits_every_step_within_token_budget():
    s = make_scheduler("continuous", planner(), 4096, 8, max_num_batched_tokens=1000)
    for i in range(5):
        s.add(req(i, prompt=400, new=5))
    out = s.schedule(0.0)
    assert [r.request_id for r in out.prefill] == ["0", "1"]  # 800 tokens; a third would pass 1000
    assert len(out.running) == 5  # all admitted (slots, memory); "2".."4" wait for their prefill
    out = s.schedule(0.1)
    assert [r.request_id for r in out.prefill] == ["2", "3"]  # 800 prefill tokens <= 1000
    assert sum(not r.is_prefilling for r in out.running) == 4


def test_uellm_groups_by_deadline_and_padding_rule():
    s = make_scheduler("uellm", planner(), 8192, 32)
    # predicted outputs via the oracle: short ones group, a much longer one breaks the group
    outs = [10, 12, 11, 3000, 10]
    for i, o in enumerate(outs):
        s.add(req(i, prompt=100, new=o, t=0.0, deadline=1.0 + i * 0.001))
    out = s.schedule(0.0)
    # key = deadline + 0.5 * output: 0 (6.0), 4 (6.004), 2 (6.502), 1 (7.001), 3 (1501.003);
    # then (3000 - 12) * (4 + 1) * 1.2 > 15000 closes the group before request 3
    assert [r.request_id for r in out.prefill] == ["0", "4", "2", "1"]
    assert s.schedule(0.1).prefill == []  # runs to completion


def test_uellm_group_size_limit():
    s = make_scheduler("uellm", planner(), 8192, 64)
    for i in range(25):
        s.add(req(i, prompt=100, new=10, t=0.0))
    assert len(s.schedule(0.0).prefill) == 10


def test_bucket_refills_from_same_bucket_only():
    s = make_scheduler("bucket", planner(), 4096, 8, bucket_mode="fixed", boundaries=[1000], refill_padding_target=0.0)
    s.add(req("short0", prompt=100, new=50))
    s.add(req("long0", prompt=2000, new=50, t=1.0))
    out = s.schedule(0.0)
    assert [r.request_id for r in out.prefill] == ["short0"]
    s.add(req("long1", prompt=2100, new=50, t=0.1))
    s.add(req("short1", prompt=120, new=50, t=0.1))
    out = s.schedule(0.1)
    assert [r.request_id for r in out.prefill] == ["short1"]
    assert (out.stats.bucket_low, out.stats.bucket_up) == (0, 1000)
    s.finish("short0", 0.2)
    s.finish("short1", 0.2)
    out = s.schedule(0.2)
    assert sorted(r.request_id for r in out.prefill) == ["long0", "long1"]


def test_bucket_online_before_offline():
    s = make_scheduler("bucket", planner(), 4096, 8, bucket_mode="fixed", boundaries=[1000])
    s.add(req("off", prompt=100, new=5, t=0.0))
    s.add(req("on", prompt=2000, new=5, t=0.5, online=True, slo_ttft_s=1.0))
    out = s.schedule(0.5)
    assert [r.request_id for r in out.prefill] == ["on"]
    assert out.stats.min_slo_slack_s == pytest.approx(1.0)


def test_bucket_refill_scope_any_admits_other_buckets_within_padding_target():
    s = make_scheduler("bucket", planner(), 4096, 8, bucket_mode="fixed", boundaries=[1000],
                       refill_scope="any", refill_padding_target=0.9)
    s.add(req("a", prompt=950, new=100))
    s.schedule(0.0)
    for _ in range(60):  # the running request grows to 1010 tokens
        s.on_tokens("a", 1, 0.0)
    s.add(req("far", prompt=100, new=10, t=0.1))  # would pull the batch far below 0.9
    s.add(req("near", prompt=1005, new=10, t=0.2))  # other bucket, but a close length
    out = s.schedule(0.2)
    assert [r.request_id for r in out.prefill] == ["near"]
    strict = make_scheduler("bucket", planner(), 4096, 8, bucket_mode="fixed", boundaries=[1000])
    strict.add(req("a", prompt=950, new=100))
    strict.schedule(0.0)
    strict.add(req("near", prompt=1005, new=10, t=0.2))
    assert strict.schedule(0.2).prefill == []  # default: same bucket only
    with pytest.raises(ValueError, match="refill_scope"):
        make_scheduler("bucket", planner(), 4096, 8, refill_scope="all")


def test_bucket_refill_scope_auto_mixes_only_a_shallow_queue():
    def setup():
        s = make_scheduler("bucket", planner(), 4096, 4, bucket_mode="fixed", boundaries=[1000],
                           refill_scope="auto")
        s.add(req("a", prompt=100, new=50))
        s.add(req("b", prompt=2000, new=50, t=0.1))
        return s

    s = setup()  # 2 waiting <= 4 free slots: both start at once, whatever their buckets
    assert sorted(r.request_id for r in s.schedule(0.2).prefill) == ["a", "b"]
    s = setup()
    for i in range(4):  # 6 waiting > 4 slots: one bucket per batch, as with refill_scope="bucket"
        s.add(req(f"c{i}", prompt=120 + i, new=50, t=0.1))
    out = s.schedule(0.2)
    assert all(r.prompt_len < 1000 for r in out.prefill) and len(out.prefill) == 4


@pytest.mark.parametrize("policy", POLICIES)
def test_output_names_what_the_runner_must_drop(policy):
    """One owner of 'which requests run': a running request that is finished or cancelled is
    named in the next output's `ended` (once), so a driver follows the output and repairs nothing;
    a request cancelled while still waiting never ran and is not named."""
    s = make(policy, max_num_seqs=2)
    for rid in ("a", "b", "c"):
        s.add(req(rid, prompt=50, new=20))
    first = s.schedule(0.0)
    running = [r.request_id for r in first.running]
    assert len(running) == 2 and first.ended == []
    waiting = ({"a", "b", "c"} - set(running)).pop()
    s.finish(running[0], 0.01)
    s.cancel(running[1], 0.01)
    s.cancel(waiting, 0.01)
    out = s.schedule(0.02)
    assert sorted(out.ended) == sorted(running)
    assert s.schedule(0.03).ended == []
    assert not s.has_work()
