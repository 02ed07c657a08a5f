"""The locustfile headless against a real server (tiny model): both user classes report
TTFT, TPOT and E2E samples without failures, and the CSV files are written."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    from bucket_scheduler.serving.launcher import ServerOptions, start_server

    handle = start_server(ServerOptions(models=["bucketserve_tiny"], http_port=0, grpc_port=0, metrics_port=0,
                                        run_dir=tmp_path_factory.mktemp("locust-run"), exit_timeout_s=10))
    try:
        yield handle
    finally:
        handle.stop()


@pytest.mark.integration
@pytest.mark.parametrize("user", ["TritonGrpcUser", "TritonHttpUser"])
def test_locust_headless_reports_ttft_tpot_e2e(tiny_server, tmp_path, user):
    host = tiny_server.grpc_url if user == "TritonGrpcUser" else tiny_server.http_url
    cmd = [
        sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", user, "--headless", "-u", "3", "-r", "3", "-t", "6s",
        "--host", host, "--csv", str(tmp_path / "run"), "--model-name", "bucketserve_tiny", "--model-dir", "tiny",
        "--num-requests", "20", "--max-prompt", "48", "--max-output", "8", "--prompt-scale", "0.05", "--output-scale", "0.1",
        "--slo-ttft-ms", "1000", "--slo-tpot-ms", "100",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "run_stats.csv", newline="") as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    protocol = "grpc" if user == "TritonGrpcUser" else "http"
    for kind in ("TTFT", "TPOT", "E2E"):
        counts = [int(r["Request Count"]) for (t, n), r in rows.items() if t == kind and n.startswith(protocol)]
        assert sum(counts) > 0, f"no {kind} samples: {sorted(rows)}"
    assert all(int(r["Failure Count"]) == 0 for r in rows.values()), proc.stderr[-3000:]
