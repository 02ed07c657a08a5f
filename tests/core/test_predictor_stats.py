import pytest

from bucket_scheduler.core.factory import make_scheduler
from bucket_scheduler.core.predictor import HistogramPredictor, OraclePredictor, make_predictor

from .helpers import planner, req, run_to_end


def test_oracle_uses_given_prediction_else_max_new_tokens():
    o = OraclePredictor()
    assert o.predict(req("a", new=50)) == 50
    assert o.predict(req("b", new=50, predicted_output_len=7)) == 7


def test_histogram_predictor_learns_quantile_per_prompt_class():
    p = HistogramPredictor(quantile=0.5, min_samples=4)
    short, long_ = req("s", prompt=100, new=500), req("l", prompt=3000, new=500)
    assert p.predict(short) == 500  # nothing observed yet: max_new_tokens
    for n in (10, 20, 30, 40, 50):
        p.observe(req("x", prompt=100), n)
    assert p.predict(short) == 30
    for n in (300, 310, 320, 330):
        p.observe(req("y", prompt=3000), n)
    assert p.predict(long_) == 320
    assert p.predict(req("c", prompt=3000, new=100)) == 100  # capped by max_new_tokens
    assert p.predict(req("d", prompt=20_000, new=999)) == 50  # unseen class: all observations
    with pytest.raises(ValueError):
        make_predictor("psychic")


def test_uellm_with_histogram_predictor_learns_from_finished_requests():
    s = make_scheduler("uellm", planner(), 4096, 16, predictor="histogram")
    for i in range(20):
        s.add(req(i, prompt=100, new=5 + i % 3))
    run_to_end(s)
    assert len(s.predictor._all) == 20
    assert s.predictor.predict(req("n", prompt=100, new=1000)) in (5, 6, 7)


def test_bucket_step_stats():
    s = make_scheduler("bucket", planner(free_bytes=10**7), 4096, 8, bucket_mode="fixed", boundaries=[256, 1024])
    s.add(req("a", prompt=100, new=10, online=True, slo_ttft_s=2.0))
    s.add(req("b", prompt=200, new=10, t=0.5))
    s.add(req("c", prompt=2000, new=10, t=0.5))
    out = s.schedule(1.0)
    st = out.stats
    assert [(b.low, b.up, b.depth) for b in st.buckets] == [(0, 256, 0), (256, 1024, 0), (1024, 4096, 1)]
    assert all(1 <= b.n_max <= 8 for b in st.buckets)
    assert st.buckets[0].n_max >= st.buckets[2].n_max  # shorter bucket, more sequences fit
    assert [r.request_id for r in out.prefill] == ["a", "b"]
    assert (st.batch_size, st.num_waiting, st.num_prefill, st.num_preempted) == (2, 1, 2, 0)
    assert (st.bucket_low, st.bucket_up) == (0, 256)
    assert st.prefill_padding_efficiency == pytest.approx((100 + 200) / (2 * 200))
    assert st.planned_kv_bytes == 2 * 210 * 128  # padded: N x longest worst case x bytes/token
    assert st.budget_bytes == int(0.9 * 10**7)
    assert st.min_slo_slack_s == pytest.approx(1.0)  # deadline 2.0, now 1.0
    assert st.decision_us > 0
