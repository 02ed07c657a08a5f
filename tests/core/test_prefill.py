"""The per-step prefill token budget and chunked prefill (core/prefill.py), for every policy."""

from __future__ import annotations

import pytest

from bucket_scheduler.core.factory import make_scheduler, policy_options
from bucket_scheduler.core.memory import BatchShape
from bucket_scheduler.core.request import RequestState

from .helpers import KV, make, planner, req, run_to_end


def test_every_policy_takes_the_shared_options(policy):
    opts = policy_options(policy)
    assert opts["max_num_batched_tokens"] is None and opts["chunked_prefill"] is False
    s = make(policy, max_num_batched_tokens=64, chunked_prefill=True)
    assert s.prefill.max_num_batched_tokens == 64 and s.prefill.chunking
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        make(policy, max_num_batched_tokens=0)


@pytest.mark.parametrize("chunked", [False, True])
def test_budget_respected_every_step(policy, chunked):
    s = make(policy, max_num_seqs=8, max_num_batched_tokens=300, chunked_prefill=chunked)
    for i in range(12):
        s.add(req(i, prompt=40 + 37 * i % 260, new=6))
    seen = []

    def on_step(out, now):
        total = sum(c.tokens for c in out.chunks)
        seen.append(total)
        assert total <= 300
        assert out.stats.prefill_tokens == total

    run_to_end(s, on_step=on_step)
    assert sum(seen) == sum(40 + 37 * i % 260 for i in range(12))  # every prompt token once
    assert not s.has_work()


def test_without_chunks_a_prompt_over_the_budget_goes_alone_first_in_line():
    s = make("continuous", max_num_batched_tokens=100)
    s.add(req("big", prompt=250, new=3))
    s.add(req("small", prompt=10, new=3))
    out = s.schedule(0.0)
    assert [(c.req.request_id, c.start, c.stop) for c in out.chunks] == [("big", 0, 250)]
    out = s.schedule(0.1)
    assert [c.req.request_id for c in out.chunks] == ["small"]


def test_long_prompt_is_chunked_over_k_steps_and_joins_with_its_last_chunk():
    s = make("continuous", max_num_batched_tokens=256, chunked_prefill=True)
    long = req("long", prompt=1000, new=4)
    s.add(long)
    spans = []
    for step in range(4):
        out = s.schedule(step * 0.1)
        assert [c.req for c in out.chunks] == [long]
        spans.append((out.chunks[0].start, out.chunks[0].stop))
        joined = out.prefill == [long]
        assert joined == (step == 3)
        assert long.is_prefilling == (step < 3) and long.state is RequestState.RUNNING
        assert long in out.running  # it holds its slot while it is prefilled
    assert spans == [(0, 256), (256, 512), (512, 768), (768, 1000)]


def test_running_batch_keeps_decoding_while_a_chunk_prefills():
    s = make("continuous", max_num_batched_tokens=128, chunked_prefill=True)
    s.add(req("short", prompt=20, new=50))
    out = s.schedule(0.0)
    assert out.prefill[0].request_id == "short"
    s.on_tokens("short", 1, 0.0)
    s.add(req("long", prompt=600, new=5))
    decoded_while_chunking = 0
    for step in range(1, 8):
        out = s.schedule(step * 0.1)
        decoding = [r.request_id for r in out.running if not r.is_prefilling and r not in out.prefill]
        assert "short" in decoding  # the batch decodes in every step a chunk is computed
        if any(c.req.request_id == "long" and not c.last for c in out.chunks):
            decoded_while_chunking += 1
        for r in out.running:
            if not r.is_prefilling:
                s.on_tokens(r.request_id, 1, step * 0.1)
    assert decoded_while_chunking == 4  # 600 tokens in chunks of 128: 4 partial, then the last
    assert s.requests["short"].num_generated == 8


def test_partial_chunks_go_first_next_step_then_new_admissions():
    s = make("continuous", max_num_batched_tokens=100, chunked_prefill=True)
    s.add(req("a", prompt=150, new=2))
    s.add(req("b", prompt=30, new=2))
    out = s.schedule(0.0)
    assert [(c.req.request_id, c.start, c.stop) for c in out.chunks] == [("a", 0, 100)]
    out = s.schedule(0.1)
    assert [(c.req.request_id, c.start, c.stop) for c in out.chunks] == [("a", 100, 150), ("b", 0, 30)]
    assert [r.request_id for r in out.prefill] == ["a", "b"]


def test_preempted_mid_chunk_starts_over_and_cancel_ends_it():
    from bucket_scheduler.core.memory import ScriptedProbe

    probe = ScriptedProbe([1 << 30])
    s = make_scheduler("continuous", planner(probe=probe), 4096, 8, max_num_batched_tokens=100, chunked_prefill=True)
    s.add(req("a", prompt=300, new=2))
    s.schedule(0.0)
    assert s.requests["a"].prefill_left == 200
    probe.set(0)
    out = s.schedule(0.1)
    assert [r.request_id for r in out.preempted] == ["a"] and not out.chunks
    assert s.requests["a"].state is RequestState.WAITING and s.requests["a"].prefill_left == 0
    probe.set(1 << 30)
    out = s.schedule(0.2)
    assert [(c.start, c.stop) for c in out.chunks] == [(0, 100)]  # from the start again
    s.cancel("a", 0.3)
    out = s.schedule(0.3)
    assert out.ended == ["a"] and not out.chunks and not out.running


def test_the_memory_plan_charges_the_staging_kv_of_a_chunked_request():
    s = make("continuous", max_num_batched_tokens=100, chunked_prefill=True)
    s.add(req("a", prompt=300, new=20))
    s.schedule(0.0)
    shape = s.running_shape()
    assert shape.staged_tokens == 320
    p = planner()
    assert p.planned_kv_bytes(shape) - p.planned_kv_bytes(BatchShape.of([320])) == 320 * KV.bytes_per_token
    for _ in range(3):
        s.schedule(0.1)
    assert s.running_shape().staged_tokens == 0  # joined the batch: no staging left


FIXED = dict(bucket_mode="fixed", boundaries=[100, 500], refill_padding_target=0.0, online_rescue=False)


def _three_buckets(scope: str):
    s = make("bucket", max_num_seqs=8, refill_scope=scope, **FIXED)
    for i in range(3):
        s.add(req(f"s{i}", prompt=20, new=50))
    out = s.schedule(0.0)
    assert {r.request_id for r in out.prefill} == {"s0", "s1", "s2"}
    for i in range(3):
        s.add(req(f"l{i}", prompt=900 + i, new=50, t=0.1))
        s.add(req(f"m{i}", prompt=300 + i, new=50, t=0.1))
    return s


def test_wide_refill_takes_each_steps_newcomers_from_one_bucket_and_decodes_across_buckets():
    s = _three_buckets("wide")
    firsts = []
    for step in (1, 2):
        out = s.schedule(step * 0.1)
        assert out.prefill
        assert len({s.buckets.bucket_for(r.seq_len).low for r in out.prefill}) == 1  # one bucket per step
        firsts.append(s.buckets.bucket_for(out.prefill[0].seq_len).low)
    assert sorted(firsts) == [100, 500]  # both other buckets joined, one after the other
    out = s.schedule(0.3)
    assert len(out.running) == 8
    assert {s.buckets.bucket_for(r.prompt_len).low for r in out.running} == {0, 100, 500}  # decode across buckets


def test_bucket_scope_keeps_one_bucket_where_wide_mixes():
    """The same queue under refill_scope=bucket: nothing joins from other buckets while the batch runs."""
    s = _three_buckets("bucket")
    out = s.schedule(0.1)
    assert len(out.running) == 3 and not out.prefill
