import json
import random

import pytest

from bucket_scheduler.core.clock import CostModel, SlotCounter
from bucket_scheduler.core.replay import load_trace, main, replay


def test_padded_prefill_costs_more_than_actual_lengths():
    padded, paged = CostModel(), CostModel(padded=False)
    assert padded.prefill_ms([100, 100]) == pytest.approx(paged.prefill_ms([100, 100]))
    assert padded.prefill_ms([100, 1000]) > paged.prefill_ms([100, 1000])
    assert padded.prefill_ms([]) == 0.0 and padded.decode_ms([]) == 0.0
    a, b, c = padded.prefill
    assert padded.prefill_ms([10, 20]) == pytest.approx(a + b * 2 * 20 + c * 2 * 400)


def test_decode_cost_grows_with_slots_and_switches_coefficients():
    m = CostModel()
    assert m.decode_ms([100] * 8) < m.decode_ms([1000] * 8) < m.decode_ms([1000] * 16)
    a, b, c = m.decode_large
    assert m.decode_ms([10] * 95) == pytest.approx(a + b * 95 * 11 + c * 95)
    assert m.step_s([100], [200]) == pytest.approx((m.prefill_ms([100]) + m.decode_ms([200])) / 1000)


def test_slot_counter():
    s = SlotCounter()
    assert s.efficiency == 1.0
    s.add([10, 30])
    s.add([])
    assert (s.useful, s.computed) == (40, 60)
    assert s.efficiency == pytest.approx(40 / 60)


def _write_trace(path, n=300, seed=0):
    rnd = random.Random(seed)
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i in range(n):
        prompt = rnd.choice([rnd.randint(20, 200), rnd.randint(1500, 3000)])  # short chat beside long documents
        lines.append(f"{i * 0.2:.3f},{prompt},{rnd.randint(5, 60)}")  # seconds also parse
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_trace_is_relative_and_scaled(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:15:46.5000000,374,44\n2023-11-16 18:15:48.0000000,396,109\n")
    rows = load_trace(str(p), time_scale=0.5)
    assert [(r.arrival_s, r.prompt_len, r.output_len) for r in rows] == [(0.0, 374, 44), (0.75, 396, 109)]
    assert len(load_trace(str(p), limit=1)) == 1


@pytest.mark.parametrize("policy", ["bucket", "static", "continuous", "uellm"])
def test_replay_finishes_everything_within_memory(tmp_path, policy):
    rows = load_trace(str(_write_trace(tmp_path / "t.csv")), time_scale=0.2)
    res = replay(rows, policy, free_bytes=8 << 30, max_model_len=4096)
    assert res.finished == res.requests == 300 and res.rejected == 0
    assert 0 < res.padding_efficiency <= 1
    assert res.max_planned_kv_bytes <= res.budget_bytes
    assert res.decision_us_p50 <= res.decision_us_p99


def test_bucket_pads_less_than_static_and_continuous_on_mixed_lengths(tmp_path):
    rows = load_trace(str(_write_trace(tmp_path / "t.csv")), time_scale=0.2)
    eff = {p: replay(rows, p, free_bytes=8 << 30, max_model_len=4096).padding_efficiency
           for p in ("bucket", "static", "continuous")}
    assert eff["bucket"] > eff["static"]
    assert eff["bucket"] > eff["continuous"]


def test_cli_json_keys(tmp_path, capsys):
    trace = _write_trace(tmp_path / "t.csv", n=40)
    assert main(["--trace", str(trace), "--policy", "bucket", "--json", "--limit", "30",
                 "--max-model-len", "4096", "--option", "max_buckets=4"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("padding_efficiency", "mean_batch_size", "max_planned_kv_bytes", "budget_bytes",
                "decision_us_p50", "decision_us_p99", "finished", "rejected", "batches"):
        assert key in res
    assert res["finished"] == 30 and res["options"] == {"max_buckets": 4}


def test_replay_online_share_reports_slo_attainment(tmp_path):
    rows = load_trace(str(_write_trace(tmp_path / "t.csv", n=120)), time_scale=0.2)
    res = replay(rows, "continuous", free_bytes=8 << 30, max_model_len=4096, online_share=0.5, slo_ttft_s=1e6)
    assert 30 < res.online < 90
    assert res.online_ttft_slo_attainment == 1.0  # an SLO nobody can miss
    tight = replay(rows, "continuous", free_bytes=8 << 30, max_model_len=4096, online_share=0.5, slo_ttft_s=0.0)
    assert tight.online == res.online and tight.online_ttft_slo_attainment == 0.0
    assert replay(rows, "continuous", free_bytes=8 << 30, max_model_len=4096).online_ttft_slo_attainment is None
