"""SIGTERM to `bucketserve serve` with requests in flight: admission stops, every request gets
its final (short ones finish, long ones get UNAVAILABLE "shutting down" after the drain), the
launcher exits 0 and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

from bucket_scheduler.serving.launcher import drain_timeout_for, free_port
from bucketserve_client import GrpcClient

from integration.helpers import process_gone
from .helpers import wait_until

EXIT_TIMEOUT_S = 10


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path):
    http, grpc = free_port(), free_port()
    log = tmp_path / "cli.log"
    cmd = [sys.executable, "-m", "bucket_scheduler.serving.cli", "serve", "--models", "bucketserve_tiny",
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(free_port()),
           "--exit-timeout-secs", str(EXIT_TIMEOUT_S), "--run-dir", str(tmp_path / "run"),
           "--log-file", str(tmp_path / "server.log")]
    with open(log, "w") as out:
        cli = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    server_pid = None
    try:
        assert wait_until(lambda: "[bucketserve] serving" in log.read_text() or cli.poll() is not None, 300), log.read_text()
        assert cli.poll() is None, log.read_text()
        server_pid = int(re.search(r"pid (\d+)", log.read_text()).group(1))
        client = GrpcClient(f"127.0.0.1:{grpc}", "bucketserve_tiny")
        firsts = [threading.Event() for _ in range(8)]
        # 6 that cannot finish within the drain, 2 that can.
        gens = [client.start(f"in flight {i}", stream=True, max_tokens=2000 if i < 6 else 40, ignore_eos=True,
                             on_delta=lambda _t, e=e: e.set()) for i, e in enumerate(firsts)]
        assert all(e.wait(120) for e in firsts)
        cli.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        late = client.generate("arrives after SIGTERM", max_tokens=4, timeout_s=30)
        results = [g.result(EXIT_TIMEOUT_S + 30) for g in gens]
        assert late.status == "error" and late.error, late  # admission stopped
        for r in results[6:]:
            assert r.ok and r.num_output_tokens == 40, r
        for r in results[:6]:
            assert r.status == "error" and "shutting down" in r.error, r
            assert f"drain_timeout_s={drain_timeout_for(EXIT_TIMEOUT_S):g}" in r.error
        assert cli.wait(EXIT_TIMEOUT_S + 30) == 0, log.read_text()
        assert wait_until(lambda: process_gone(server_pid), 10)
        assert "server exited with code 0" in log.read_text()
    finally:
        if cli.poll() is None:
            cli.kill()
        if server_pid and not process_gone(server_pid):
            os.killpg(server_pid, signal.SIGKILL)
