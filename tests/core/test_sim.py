"""The cluster simulator's pure pieces: workloads, hardware, instances, the event loop, systems."""

from __future__ import annotations

import random
import statistics

import pytest

from bucket_scheduler.core.clock import CostModel
from bucket_scheduler.core.prefill import prefill_groups
from bucket_scheduler.core.sim import ClusterSpec, PaperWorkload, build, default_config, simulate
from bucket_scheduler.core.sim.cluster import Deployment
from bucket_scheduler.core.sim.hardware import LLAMA2_13B_KV, GpuSpec
from bucket_scheduler.core.sim.instance import ColocatedInstance, SchedulerSpec, build_scheduler, chunk_prefill_ms
from bucket_scheduler.core.sim.systems import SYSTEMS
from bucket_scheduler.core.sim.workload import ALPACA, LONGBENCH, SimRequestSpec

CLUSTER = ClusterSpec()


def spec(i, prompt, out, t=0.0, ttft=None, tpot=None, source="alpaca"):
    return SimRequestSpec(i, source, t, prompt, out, ttft, tpot)


# --- workload -----------------------------------------------------------------------------


def test_alpaca_prompts_have_the_papers_mean_and_median():
    rng = random.Random(1)
    xs = [ALPACA.prompt.sample(rng) for _ in range(40000)]
    assert statistics.median(xs) == pytest.approx(69, rel=0.03)
    assert statistics.fmean(xs) == pytest.approx(83.7, rel=0.03)


def test_longbench_untruncated_statistics_and_truncation_to_the_context():
    rng = random.Random(2)
    xs = [LONGBENCH.prompt.sample(rng) for _ in range(40000)]
    assert statistics.median(xs) == pytest.approx(41417, rel=0.03)
    assert statistics.fmean(xs) == pytest.approx(55749, rel=0.04)
    reqs = PaperWorkload("longbench", 200, max_model_len=4096).requests(None)
    assert all(r.prompt_len + r.output_len <= 4096 for r in reqs)
    assert statistics.median(r.prompt_len for r in reqs) > 3000  # nearly all are cut to the context


def test_mixed_share_poisson_rate_and_lengths_fixed_across_rates():
    wl = PaperWorkload("mixed", 4000, mixed_long_share=0.2, seed=3)
    slow, fast = wl.requests(2.0), wl.requests(8.0)
    assert [(r.prompt_len, r.output_len) for r in slow] == [(r.prompt_len, r.output_len) for r in fast]
    share = sum(r.source == "longbench" for r in slow) / len(slow)
    assert share == pytest.approx(0.2, abs=0.02)
    assert len(fast) / fast[-1].arrival_s == pytest.approx(8.0, rel=0.05)
    by_src = {r.source: (r.slo_ttft_s, r.slo_tpot_s) for r in slow}
    assert by_src == {"alpaca": (0.25, 0.1), "longbench": (15.0, 0.15)}
    offline = wl.requests(None, online=False)
    assert all(r.arrival_s == 0 and r.slo_ttft_s is None for r in offline)


def test_unknown_workload_is_refused():
    with pytest.raises(ValueError, match="unknown workload"):
        PaperWorkload("sharegpt")


# --- hardware -----------------------------------------------------------------------------


def test_a100_40gb_leaves_room_for_about_16k_tokens_of_llama2_13b_kv():
    g = GpuSpec()
    assert LLAMA2_13B_KV.bytes_per_token == 819_200
    tokens = 0.9 * g.free_kv_bytes / g.kv.bytes_per_token
    assert 14_000 < tokens < 18_000
    assert CLUSTER.transfer_s(4096) == pytest.approx(4096 * 819_200 / 300e9)
    with pytest.raises(ValueError, match="does not fit"):
        _ = GpuSpec(memory_bytes=16 << 30).free_kv_bytes


# --- instances and the event loop ------------------------------------------------------------


def one_gpu(policy, options=None, accounting="padded", padded=True, **kw):
    sched = build_scheduler(SchedulerSpec(policy, options or {}, accounting, 64), LLAMA2_13B_KV,
                            CLUSTER.gpu.free_kv_bytes, 0.9, 4096)
    return ColocatedInstance("gpu0", sched, CostModel(padded=padded), **kw)


@pytest.mark.parametrize("system", SYSTEMS)
def test_every_system_finishes_every_request_with_its_exact_output(system):
    wl = PaperWorkload("mixed", 80, seed=5)
    specs = wl.requests(3.0)
    run = simulate(build(default_config(system), CLUSTER, 2 if system in ("bucketserve", "distserve") else None), specs)
    assert [r.generated for r in run.records] == [s.output_len for s in specs]
    for r in run.records:
        assert r.spec.arrival_s < r.first_token_s <= r.finish_s <= run.makespan_s
    assert all(0 < g["utilization"] <= 1 for g in run.gpus if g["steps"])


def test_replay_step_gives_one_token_per_step_engine_step_two_in_the_first():
    for mode, first_step_tokens in (("replay", 1), ("engine", 2)):
        inst = one_gpu("continuous", step_mode=mode)
        run = simulate(Deployment(colocated=[inst]), [spec(0, 100, 5)])
        rec = run.records[0]
        assert rec.generated == 5
        steps = 5 - first_step_tokens + 1
        assert inst.steps == steps


def test_engine_step_first_token_comes_after_prefill_before_the_decode():
    inst = one_gpu("continuous", step_mode="engine", padded=False)
    run = simulate(Deployment(colocated=[inst]), [spec(0, 1000, 2)])
    rec = run.records[0]
    cost = CostModel(padded=False)
    assert rec.first_token_s == pytest.approx(cost.prefill_ms([1000]) / 1000)
    # the decode forward feeds the first token in: the KV holds the 1000 prompt tokens
    assert rec.finish_s == pytest.approx(rec.first_token_s + cost.decode_ms([1000]) / 1000)


# --- the engine replay: the engine's per-step prefill budget, chunks and passes ---------------

# Distinct terms per pass kind, so each expected time below names the passes it is made of.
ENGINE_COST = CostModel(prefill=(10.0, 0.1, 1e-4), chunk=(5.0, 0.2, 1e-3), decode_small=(3.0, 0.01, 0.5),
                        decode_switch_bs=1 << 30, padded=True, mixed=(8.0, 0.3, 0.7, 2e-3, 0.02))


def engine_gpu(policy, options, **kw):
    sched = build_scheduler(SchedulerSpec(policy, options, "padded", 32), LLAMA2_13B_KV,
                            CLUSTER.gpu.free_kv_bytes, 0.9, 4096)
    return ColocatedInstance("cpu", sched, ENGINE_COST, step_mode="engine", **kw)


def test_engine_replay_prefills_whole_prompts_in_the_budget_then_chunks_a_long_one_priced_by_prefix():
    inst = engine_gpu("continuous", {"max_num_batched_tokens": 256, "chunked_prefill": True})
    run = simulate(Deployment(colocated=[inst]), [spec(0, 100, 5), spec(1, 600, 2)])
    a, b = run.records
    c = ENGINE_COST
    # step 1: A (100) whole in one forward, then B's first chunk takes the 156 tokens left of the
    # budget (a forward of its own), then A decodes (its KV: 100 tokens)
    t_a1 = c.prefill_ms([100]) / 1000
    t1 = t_a1 + (c.chunk_ms(0, 156) + c.decode_ms([100])) / 1000
    assert a.first_token_s == pytest.approx(t_a1)
    # step 2: B's middle chunk attends to 156 cached tokens; A keeps decoding
    t2 = t1 + (c.chunk_ms(156, 256) + c.decode_ms([101])) / 1000
    # step 3: B's last chunk (188 after 412) gives its first token; B joins and decodes with A
    t_b1 = t2 + c.chunk_ms(412, 188) / 1000
    t3 = t_b1 + c.decode_ms([102, 600]) / 1000
    assert b.first_token_s == pytest.approx(t_b1)
    assert b.finish_s == pytest.approx(t3)
    assert a.finish_s == pytest.approx(t3 + c.decode_ms([103]) / 1000)  # step 4: A alone, 5th token
    assert inst.steps == 4 and inst.prefill_useful == inst.prefill_computed == 700


def test_engine_replay_without_chunking_a_prompt_over_the_budget_waits_then_goes_alone():
    inst = engine_gpu("continuous", {"max_num_batched_tokens": 256, "chunked_prefill": False})
    run = simulate(Deployment(colocated=[inst]), [spec(0, 100, 3), spec(1, 300, 2)])
    a, b = run.records
    c = ENGINE_COST
    t1 = (c.prefill_ms([100]) + c.decode_ms([100])) / 1000  # B does not fit what is left: next step
    assert a.first_token_s == pytest.approx(c.prefill_ms([100]) / 1000)
    assert b.first_token_s == pytest.approx(t1 + c.prefill_ms([300]) / 1000)  # alone, whole, over the budget
    assert b.finish_s == pytest.approx(b.first_token_s + c.decode_ms([101, 300]) / 1000)


def test_engine_replay_without_a_budget_splits_a_batched_prefill_into_the_runners_forwards():
    inst = engine_gpu("static", {"max_batch_size": 3, "max_queue_delay_s": 0.0}, prefill_group_tokens=300)
    run = simulate(Deployment(colocated=[inst]), [spec(0, 100, 2), spec(1, 200, 2), spec(2, 150, 2)])
    c = ENGINE_COST
    # 2 rows x 200 > 300 slots: three forwards, each paying its constant once
    assert prefill_groups([100, 200, 150], 300) == [(0, 1), (1, 2), (2, 3)]
    t = sum(c.prefill_ms(g) for g in ([100], [200], [150])) / 1000
    assert [r.first_token_s for r in run.records] == pytest.approx([t] * 3)
    assert inst.prefill_computed == 450
    assert prefill_groups([100, 200, 150]) == [(0, 3)]  # the runner's default: one forward


def test_engine_step_cost_pays_each_forward_once_and_a_chunk_grows_with_its_prefix():
    c = ENGINE_COST
    assert c.engine_step_ms([], [], []) == 0.0
    assert c.engine_step_ms([[10, 20]], [(0, 8)], [5, 9]) == pytest.approx(
        (10 + 0.1 * 40 + 1e-4 * 2 * 400) + (5 + 0.2 * 8 + 1e-3 * 64) + (3 + 0.01 * 2 * 10 + 0.5 * 2))
    assert c.chunk_ms(500, 100) - c.chunk_ms(0, 100) == pytest.approx(1e-3 * 100 * 500)
    shared = CostModel(prefill=(10.0, 0.1, 1e-4))
    assert shared.chunk_ms(0, 64) == pytest.approx(shared.prefill_ms([64]))  # no chunk terms: the prefill's


def test_one_pass_replay_runs_chunks_and_decode_in_one_pass_and_joiners_do_not_decode():
    inst = engine_gpu("continuous", {"max_num_batched_tokens": 256, "chunked_prefill": True}, mixed_step=True)
    assert inst.one_pass
    run = simulate(Deployment(colocated=[inst]), [spec(0, 100, 3), spec(1, 600, 2)])
    a, b = run.records
    c = ENGINE_COST
    # step 1: A whole (a chunk with prefix 0) and B's first 156 tokens in one pass, nothing to decode
    t1 = c.mixed_step_ms([(0, 100), (0, 156)], []) / 1000
    assert a.first_token_s == pytest.approx(t1)
    # step 2: B's middle chunk attends 156 cached tokens; A, in the batch since step 1, decodes (KV 100)
    t2 = t1 + c.mixed_step_ms([(156, 256)], [100]) / 1000
    # step 3: B's last chunk gives its first token in the same pass as A's third (last) token
    t3 = t2 + c.mixed_step_ms([(412, 188)], [101]) / 1000
    assert a.finish_s == pytest.approx(t3) and b.first_token_s == pytest.approx(t3)
    # step 4: B decodes alone: it did not decode in the pass it joined
    assert b.finish_s == pytest.approx(t3 + c.mixed_step_ms([], [600]) / 1000)
    assert inst.steps == 4 and inst.prefill_useful == inst.prefill_computed == 700
    assert inst.busy_s == pytest.approx(b.finish_s)


def test_one_pass_step_cost_has_one_constant_token_and_attention_terms():
    c = ENGINE_COST
    assert c.mixed_step_ms([], []) == 0.0
    # 2 chunks (0, 8) and (20, 4), 3 rows with KV up to 9: 15 tokens, 5 output rows
    assert c.mixed_step_ms([(0, 8), (20, 4)], [5, 9, 7]) == pytest.approx(
        8.0 + 0.3 * 15 + 0.7 * 5 + 2e-3 * (8 * 8 + 4 * 24) + 0.02 * 3 * 10)
    # one pass for the whole step: a chunk added to a decode step adds its tokens, not a constant
    assert c.mixed_step_ms([(0, 8)], [5]) - c.mixed_step_ms([], [5]) == pytest.approx(0.3 * 8 + 0.7 + 2e-3 * 64)
    unpadded = CostModel(padded=False, mixed=ENGINE_COST.mixed)
    assert unpadded.mixed_step_ms([], [5, 9]) == pytest.approx(8.0 + 0.3 * 2 + 0.7 * 2 + 0.02 * 16)
    with pytest.raises(ValueError, match="mixed coefficients"):
        CostModel().mixed_step_ms([(0, 8)], [])


@pytest.mark.parametrize("policy, options", [
    ("continuous", {"max_num_batched_tokens": 256, "chunked_prefill": False}),
    ("static", {"max_batch_size": 3, "max_queue_delay_s": 0.0}),
])
def test_one_pass_setting_keeps_the_three_pass_step_where_prompts_are_not_chunked(policy, options):
    specs = [spec(0, 100, 3), spec(1, 300, 2)]
    runs = []
    for mixed in (False, True):
        inst = engine_gpu(policy, options, mixed_step=mixed)
        assert not inst.one_pass
        runs.append([(r.first_token_s, r.finish_s) for r in simulate(Deployment(colocated=[inst]), specs).records])
    assert runs[0] == runs[1]


def test_one_pass_replay_needs_one_pass_coefficients():
    sched = build_scheduler(SchedulerSpec("continuous", {"max_num_batched_tokens": 256, "chunked_prefill": True}, "padded", 32),
                            LLAMA2_13B_KV, CLUSTER.gpu.free_kv_bytes, 0.9, 4096)
    with pytest.raises(ValueError, match="CostModel.mixed"):
        ColocatedInstance("cpu", sched, CostModel(), step_mode="engine", mixed_step=True)
    assert not ColocatedInstance("cpu", sched, CostModel(), step_mode="replay", mixed_step=True).one_pass


def test_chunked_prefill_spreads_a_long_prompt_and_keeps_decoding():
    inst = one_gpu("continuous", {"max_num_batched_tokens": 1 << 40}, "per_request", padded=False, chunk_tokens=2048)
    short, long_ = spec(0, 50, 40), spec(1, 4000, 4, t=0.05)
    run = simulate(Deployment(colocated=[inst]), [short, long_])
    s, l = run.records
    # the long prompt needs two chunks: its first token comes a step after its first chunk
    cost = CostModel(padded=False)
    one_shot = cost.prefill_ms([4000]) / 1000
    assert l.first_token_s - l.spec.arrival_s > one_shot * 0.9
    assert s.finish_s > l.first_token_s  # the short one kept decoding meanwhile
    assert chunk_prefill_ms(cost, [(0, 4000)]) == pytest.approx(cost.prefill_ms([4000]))
    two = chunk_prefill_ms(cost, [(0, 2048)]) + chunk_prefill_ms(cost, [(2048, 1952)])
    assert two == pytest.approx(cost.prefill_ms([4000]) + cost.prefill[0])  # one more constant term


def test_padded_systems_waste_prefill_slots_paged_ones_do_not():
    wl = PaperWorkload("mixed", 60, seed=7)
    static = simulate(build(default_config("static"), CLUSTER), wl.requests(None))
    vllm = simulate(build(default_config("vllm"), CLUSTER), wl.requests(None))
    assert all(g["prefill_padding_efficiency"] < 0.9 for g in static.gpus)
    assert all(g["prefill_padding_efficiency"] == 1.0 for g in vllm.gpus if g["prefill_padding_efficiency"] is not None)


def test_disaggregated_first_token_from_prefill_then_kv_transfer_then_decode():
    d = build(default_config("distserve"), CLUSTER, 1)
    run = simulate(d, [spec(0, 4000, 3)])
    rec = run.records[0]
    cost = CLUSTER.gpu.cost
    pre = CostModel(padded=False).prefill_ms([4000]) / 1000
    assert rec.first_token_s == pytest.approx(pre)
    dec1 = CostModel(padded=False).decode_ms([4001]) / 1000
    dec2 = CostModel(padded=False).decode_ms([4002]) / 1000
    assert rec.finish_s == pytest.approx(pre + CLUSTER.transfer_s(4000) + dec1 + dec2)
    assert cost.prefill == CostModel().prefill


def test_bucket_prefill_serves_a_tight_deadline_before_an_earlier_long_prompt():
    """DistServe's FCFS prefill runs whatever came first; BucketServe's picks the bucket of the
    earliest deadline (boundaries fixed here: Algorithm 1 keeps one bucket at this queue depth)."""
    reqs = [spec(0, 4000, 2, t=0.0, ttft=15.0, tpot=0.15, source="longbench"),
            spec(1, 3900, 2, t=0.001, ttft=15.0, tpot=0.15, source="longbench"),
            spec(2, 60, 2, t=0.002, ttft=0.25, tpot=0.1)]
    firsts = {}
    for system in ("distserve", "bucketserve"):
        cfg = default_config(system, {"bucket_mode": "fixed", "boundaries": [0, 512]})
        run = simulate(build(cfg, CLUSTER, 1), reqs)
        firsts[system] = [r.first_token_s - r.spec.arrival_s for r in run.records]
    assert firsts["distserve"][2] > 0.25  # the short request waited for two long prefills
    assert firsts["bucketserve"][2] < firsts["distserve"][2]
    assert firsts["bucketserve"][1] > firsts["distserve"][1]  # the long one waited instead


def test_simulation_is_deterministic():
    wl = PaperWorkload("mixed", 50, seed=9)
    a = simulate(build(default_config("bucketserve"), CLUSTER, 2), wl.requests(4.0))
    b = simulate(build(default_config("bucketserve"), CLUSTER, 2), wl.requests(4.0))
    assert [(r.first_token_s, r.finish_s) for r in a.records] == [(r.first_token_s, r.finish_s) for r in b.records]


def test_deployment_shapes_are_checked():
    with pytest.raises(ValueError, match="num_prefill"):
        build(default_config("distserve"), CLUSTER, 4)
    with pytest.raises(ValueError, match="either colocated"):
        Deployment()
    with pytest.raises(ValueError, match="unknown system"):
        default_config("orca")


def test_router_sends_a_prompt_to_the_prefill_gpu_that_is_free_first():
    """Two prefill GPUs: a short prompt arriving while one computes a long prompt goes to the other."""
    reqs = [spec(0, 4000, 2, t=0.0, ttft=15.0, tpot=0.15, source="longbench"), spec(1, 60, 2, t=0.01, ttft=0.25, tpot=0.1)]
    run = simulate(build(default_config("distserve"), CLUSTER, 2), reqs)
    short = run.records[1]
    assert short.first_token_s - short.spec.arrival_s < 0.05  # it did not wait for the 0.5 s prefill
    assert [g["steps"] for g in run.gpus[:2]] == [1, 1]
