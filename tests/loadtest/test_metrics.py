"""Per-run metrics, SLO judgement, the rate-at-attainment interpolation and report ratios."""

from __future__ import annotations

import pytest

from bucketserve_bench.metrics import RequestResult, percentile, rate_at_attainment, summarize_run
from bucketserve_bench.report import headline, markdown, ratios
from bucketserve_bench.scrape import delta, parse_metrics


def res(i, online, ttft, e2e, n_out, send=0.0, slo=(100.0, 10.0), error=None):
    return RequestResult(
        index=i, online=online, prompt_tokens=10, expected_output_tokens=n_out, send_time=send,
        ttft_s=ttft, e2e_s=e2e, output_tokens=n_out, error=error,
        slo_ttft_ms=slo[0] if online else None, slo_tpot_ms=slo[1] if online else None,
    )  # fmt: skip


def test_slo_judgement():
    assert res(0, True, 0.05, 0.05 + 0.009 * 10, 11).meets_slo  # TTFT 50 ms, TPOT 9 ms
    assert not res(0, True, 0.15, 0.2, 2).meets_slo  # TTFT over
    assert not res(0, True, 0.05, 0.05 + 0.02 * 10, 11).meets_slo  # TPOT over
    assert res(0, False, 5.0, 50.0, 11).meets_slo  # offline: finishing is enough
    assert not res(0, False, None, None, 0, error="boom").meets_slo
    assert res(0, True, 0.05, 0.05, 1).tpot_s == 0.0


def test_summarize_run():
    rs = [
        res(0, True, 0.05, 0.14, 11, send=0.0),  # meets
        res(1, True, 0.50, 0.60, 11, send=1.0),  # TTFT miss
        res(2, False, 0.10, 1.00, 21, send=2.0),  # offline, done
        res(3, True, None, None, 0, send=3.0, error="timed out"),
    ]
    s = summarize_run("sys", "rate", 1.0, rs)
    assert s.completed == 3 and s.errors == 1
    assert s.slo_attainment == pytest.approx(1 / 3)
    assert s.slo_attainment_all == pytest.approx(2 / 4)
    assert s.duration_s == pytest.approx(3.0)  # first send 0.0 -> last end 2.0 + 1.0
    assert s.goodput_rps == pytest.approx(2 / 3.0)
    assert s.output_tokens_per_s == pytest.approx(43 / 3.0)
    assert s.ttft_ms["p50"] == pytest.approx(100.0)
    assert s.first_error == "timed out"


def test_percentile():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)


def test_rate_at_attainment_interpolates_first_crossing():
    est = rate_at_attainment([(2.0, 0.6), (1.0, 0.9), (0.5, 1.0), (4.0, 0.85)])
    assert est.bound == "interpolated"
    assert est.rate == pytest.approx(1.0 + (2.0 - 1.0) * (0.9 - 0.8) / (0.9 - 0.6))  # 1.333


def test_rate_at_attainment_edges():
    assert rate_at_attainment([(1.0, 0.95), (2.0, 0.81)]).bound == "at_least"
    assert rate_at_attainment([(1.0, 0.95), (2.0, 0.81)]).rate == 2.0
    below = rate_at_attainment([(1.0, 0.5), (2.0, 0.2)])
    assert below.bound == "below" and below.rate == pytest.approx(1.0 * 0.2 / 0.5)  # from (0, 1.0)
    assert rate_at_attainment([]).rate is None
    exact = rate_at_attainment([(1.0, 0.8), (2.0, 0.4)])
    assert exact.rate == pytest.approx(1.0)


def test_parse_metrics_and_delta():
    text = (
        '# HELP bucketserve_requests_total x\n# TYPE bucketserve_requests_total counter\n'
        'bucketserve_requests_total{model="bucketserve",version="1",outcome="success"} 7\n'
        'bucketserve_requests_total{model="bucketserve",version="1",outcome="error"} 1\n'
        'bucketserve_padding_efficiency{model="bucketserve",version="1"} 0.625\n'
        'nv_inference_count{model="bucketserve",version="1"} 8\n'
    )
    m = parse_metrics(text)
    assert m == {
        'bucketserve_requests_total{outcome="success"}': 7.0,
        'bucketserve_requests_total{outcome="error"}': 1.0,
        "bucketserve_padding_efficiency": 0.625,
    }
    assert delta({'bucketserve_requests_total{outcome="success"}': 2.0}, m)['bucketserve_requests_total{outcome="success"}'] == 5.0


def _system(name, rates_att, goodputs, offline_tps):
    runs = [{"mode": "rate", "rate": r, "slo_attainment": a, "goodput_rps": g} for (r, a), g in zip(rates_att, goodputs)]
    runs.append({"mode": "offline", "rate": None, "slo_attainment": None, "goodput_rps": 0.0, "output_tokens_per_s": offline_tps,
                 "total_tokens_per_s": offline_tps * 5, "padding_efficiency": 0.5})
    cap = rate_at_attainment(rates_att)
    return {"name": name, "kind": "bucketserve", "runs": runs, "capacity": {"rate": cap.rate, "bound": cap.bound}}


def test_headline_and_ratios():
    systems = [
        _system("bucket", [(1.0, 1.0), (2.0, 0.9), (4.0, 0.5)], [1.0, 1.8, 1.5], 400.0),
        _system("static", [(1.0, 0.9), (2.0, 0.4), (4.0, 0.1)], [0.9, 0.8, 0.4], 100.0),
        {"name": "vllm", "kind": "vllm", "runs": [], "skipped": "venv absent"},
    ]
    head = headline(systems)
    assert set(head) == {"bucket", "static"}
    assert head["bucket"]["max_goodput_rps"] == 1.8
    r = ratios(head)
    assert r["static"]["offline_output_tokens_per_s"] == pytest.approx(4.0)
    assert r["static"]["goal"]["met"] is True  # 4.0 >= 2.0
    assert r["static"]["rate_at_slo"] == pytest.approx(head["bucket"]["rate_at_slo"] / head["static"]["rate_at_slo"])
    report = {
        "workload": {"summary": {"num_requests": 3, "online": 2, "offline": 1}, "traces": ["t"], "shaping": "none", "seed": 0},
        "slo": {"slo_ttft_ms": 100.0, "slo_tpot_ms": 10.0},
        "headline": head, "ratios": r, "systems": [],
    }
    md = markdown(report)
    assert "| bucket |" in md and "4.00x" in md


def test_run_padding_efficiency_from_cumulative_ratio():
    from bucketserve_bench.bench import run_padding_efficiency

    # 1000 useful of 1250 computed slots before; the run adds 600 useful in 1000 slots.
    before = {"bucketserve_padding_efficiency": 0.8, "bucketserve_prompt_tokens_total": 1000.0}
    after = {"bucketserve_padding_efficiency": 1600 / 2250, "bucketserve_prompt_tokens_total": 1600.0}
    assert run_padding_efficiency(before, after) == pytest.approx(0.6)
    fresh = {"bucketserve_padding_efficiency": 1.0, "bucketserve_prompt_tokens_total": 0.0}
    assert run_padding_efficiency(fresh, {"bucketserve_padding_efficiency": 0.5, "bucketserve_prompt_tokens_total": 10.0}) == pytest.approx(0.5)
    assert run_padding_efficiency(before, before) is None  # nothing ran
    assert run_padding_efficiency({}, {}) is None


def test_ratio_against_a_system_that_misses_at_every_rate_is_a_lower_bound():
    systems = [
        _system("bucket", [(0.5, 0.9), (1.0, 0.85), (1.5, 0.6)], [0.5, 0.9, 0.8], 20.0),
        _system("uellm", [(0.5, 0.5), (1.0, 0.1), (1.5, 0.1)], [0.3, 0.2, 0.2], 10.0),
    ]
    head = headline(systems)
    assert head["uellm"]["rate_at_slo_bound"] == "below"
    r = ratios(head)["uellm"]
    assert r["rate_at_slo_at_least"] == pytest.approx(head["bucket"]["rate_at_slo"] / 0.5)
    assert r["goal"]["ratio"] == r["rate_at_slo_at_least"] and r["goal"]["met"] is True
