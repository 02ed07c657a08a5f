"""CI smoke run of benchmarks/engine_bench.py --quick (tiny model): every policy serves
every request of the trace slice, and the raw-speed mode produces its figures."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "engine_bench.py"
TRACE = SCRIPT.parents[1] / "data" / "azure_llm_2023_conv.csv"


def load_bench():
    spec = importlib.util.spec_from_file_location("engine_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["engine_bench"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not TRACE.is_file(), reason="trace data not present next to the repository")
def test_quick_trace_replay(tmp_path):
    out = tmp_path / "trace.json"
    assert load_bench().main(["--quick", "--threads", "1", "--trace", str(TRACE), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    results = {r["policy"]: r for r in report["results"]}
    assert set(results) == {"bucket", "static", "continuous", "uellm"}
    for r in results.values():
        assert r["requests"] == 16 and r["errors"] == 0
        assert r["output_tokens"] > 0 and r["out_tok_s"] > 0
        assert 0 < r["prefill_padding_eff"] <= 1


def test_quick_raw_speed(tmp_path):
    out = tmp_path / "raw.json"
    assert load_bench().main(["--quick", "--raw", "--threads", "1", "--no-hf-generate", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["prefill_tok_s"] > 0 and row["decode_tok_s"] > 0 and row["limit_tok_s_now"] > 0
