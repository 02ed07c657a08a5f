"""The smoke mode end to end: real tritonserver (tiny model), two policies, sweep, reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_quick_mode_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "bucketserve_bench.cli", "sweep", "--quick", "--json", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sanity checks passed" in proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])  # --json: one object, the last line of stdout
    assert set(last["ratios"]) >= {"static"} and last["headline"]
    report = json.loads((out / "results.json").read_text())
    names = [s["name"] for s in report["systems"] if not s.get("skipped")]
    assert names == ["bucket", "static"]
    for s in report["systems"]:
        modes = [r["mode"] for r in s["runs"]]
        assert sorted(modes) == ["offline", "rate", "rate"]
        assert all(r["completed"] == r["num_requests"] == 12 for r in s["runs"])
    assert report["slo"]["slo_ttft_ms"] > 0 and report["slo"]["slo_tpot_ms"] > 0
    assert "static" in report["ratios"]
    md = (out / "report.md").read_text()
    assert "| bucket |" in md and "| static |" in md
    for png in ("slo_attainment_vs_rate.png", "throughput.png", "ttft_p99_vs_rate.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
