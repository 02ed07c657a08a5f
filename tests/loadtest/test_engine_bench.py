"""`bucketserve-bench engine / scheduler / step --quick --json` (tiny model, in-process): every
policy serves every request of the trace slice, raw speed reports its figures against the
matmul limit, and each prints one JSON object as the last line of stdout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bucketserve_bench import engine_bench
from bucketserve_bench.cli import main

TRACE = Path(__file__).resolve().parents[2] / "data" / "azure_llm_2023_conv.csv"


def last_json(capsys) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert isinstance(report, dict)
    return report


@pytest.mark.skipif(not TRACE.is_file(), reason="trace data not present next to the repository")
def test_quick_trace_replay(capsys):
    assert main(["engine", "--quick", "--set", "threads=1", "--trace", str(TRACE), "--json"]) == 0
    report = last_json(capsys)
    results = {r["policy"]: r for r in report["results"]}
    assert set(results) == {"bucket", "static", "continuous", "uellm"}
    for r in results.values():
        assert r["requests"] == 16 and r["errors"] == 0
        assert r["output_tokens"] > 0 and r["out_tok_s"] > 0
        assert 0 < r["prefill_padding_eff"] <= 1
    assert report["settings"]["threads"] == 1


def test_quick_raw_speed_reports_the_limit(capsys):
    assert main(["engine", "--quick", "--raw", "--set", "threads=1", "--json"]) == 0
    r = last_json(capsys)
    for key in ("prefill_tok_s", "decode_tok_s", "peak_gflops_now", "gflop_per_token", "limit_tok_s_now", "context_tokens"):
        assert r[key] > 0, key
    assert r["sequences"] == 32 and r["dtype"] == "float32"
    assert r["limit_tok_s_now"] == pytest.approx(r["peak_gflops_now"] / r["gflop_per_token"])


def test_set_reaches_engine_config_through_the_settings_parser():
    args = engine_bench.parse_args(["--quick", "--set", "max_num_seqs=7", "--set", "scheduler.max_batch_size=8",
                                    "--set", "batch_invariant=true"])
    cfg = engine_bench.engine_config(args)
    assert cfg.max_num_seqs == 7 and cfg.batch_invariant is True and cfg.scheduler_options["max_batch_size"] == 8
    assert cfg.model_dir == "tiny"  # --quick's default, which --set could override
    with pytest.raises(ValueError, match="unknown setting"):
        engine_bench.engine_config(engine_bench.parse_args(["--set", "no_such_field=1"]))


def test_quick_scheduler_and_step_print_one_json_line(capsys):
    assert main(["scheduler", "--quick", "--policies", "bucket,static", "--json"]) == 0
    r = last_json(capsys)
    assert {(x["policy"], x["waiting"]) for x in r["results"]} == {(p, n) for p in ("bucket", "static") for n in (10, 1000)}
    assert all(x["p99_us"] >= x["p50_us"] > 0 for x in r["results"])
    assert main(["step", "--quick", "--threads", "1", "--json"]) == 0
    r = last_json(capsys)
    assert {(x["variant"], x["rows"]) for x in r["decode"]} == {(v, n) for v in ("hf", "lean") for n in (1, 4)}
    assert all(x["tok_s"] > 0 for x in r["decode"] + r["prefill"])


def test_bare_flags_are_the_sweep(capsys):
    """`bucketserve-bench --flags` (no subcommand) keeps meaning the serving sweep."""
    for argv in (["--help"], ["sweep", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "bucketserve-bench sweep" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not TRACE.is_file(), reason="trace data not present next to the repository")
def test_quick_served_against_in_process(capsys):
    """The same requests through a real tritonserver and the in-process engine: both answer every
    request with every token, and the ratio is theirs."""
    assert main(["engine", "--served", "--quick", "--rounds", "1", "--set", "threads=1", "--trace", str(TRACE),
                 "--json"]) == 0
    r = last_json(capsys)
    by = {x["system"]: x for x in r["rounds"]}
    assert set(by) == {"engine", "served"}
    assert by["engine"]["errors"] == by["served"]["errors"] == 0
    assert by["engine"]["output_tokens"] == by["served"]["output_tokens"] > 0
    assert by["served"]["server_cpu_s"] > 0
    assert r["ratio_served_engine"] == pytest.approx(by["served"]["out_tok_s"] / by["engine"]["out_tok_s"])
