"""The cluster bench's command line (no cluster started)."""

from bucketserve_bench.cluster_bench import SHAPES, goal_ratios, parse_args


def test_quick_runs_the_two_routers_short_and_keeps_flags_given():
    a = parse_args(["--quick"])
    assert a.systems == "bucket-2x1,pow2-2x1" and a.num_requests == 24 and a.rates == "0.6,1.2"
    b = parse_args(["--quick", "--num-requests", "40", "--systems", "bucket-2x1,bucket-tokens-2x1,pow2-2x1"])
    assert b.num_requests == 40 and b.systems.split(",")[1] == "bucket-tokens-2x1"
    assert parse_args([]).systems == "bucket-2x1,pow2-2x1,single-1x2" and not parse_args([]).quick
    assert SHAPES["bucket-tokens-2x1"] == ("bucket", 2, 1, "tokens") and SHAPES["bucket-2x1"][3] == "padding"


def test_goal_ratios_divide_side_by_side_figures():
    head = {"bucket-2x1": {"rate_at_slo": 1.5}, "pow2-2x1": {"rate_at_slo": 1.0, "offline_total_tokens_per_s": 400},
            "single-1x2": {"offline_total_tokens_per_s": 200}, "bucket-tokens-2x1": {"rate_at_slo": 0.5}}
    r = goal_ratios(head)
    assert r["bucket_over_pow2_rate_at_80"] == 1.5 and r["two_by_one_over_one_by_two_throughput"] == 2.0
    assert r["bucket_tokens_over_pow2_rate_at_80"] == 0.5
