"""`bucketserve serve` as a user runs it: flags override settings for the run, SIGTERM and
SIGINT stop the server cleanly (exit 0) and leave no process behind."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from bucket_scheduler.serving.launcher import free_port
from bucketserve_client import GrpcClient

from .helpers import process_gone, wait_until


def _ok(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _ready(http_port):
    return _ok(f"http://127.0.0.1:{http_port}/v2/health/ready")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_applies_flags_and_stops_cleanly_on_signal(tmp_path, sig):
    http, grpc, metrics, openai = free_port(), free_port(), free_port(), free_port()
    log = tmp_path / "cli.log"
    cmd = [sys.executable, "-m", "bucket_scheduler.serving.cli", "serve", "--models", "bucketserve_tiny",
           "--policy", "static", "--max-num-seqs", "4", "--param", "scheduler.max_queue_delay_s=0",
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--openai-port", str(openai),
           "--exit-timeout-secs", "5", "--run-dir", str(tmp_path / "run"), "--log-file", str(tmp_path / "server.log")]
    with open(log, "w") as out:
        cli = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    server_pid = None
    try:
        assert wait_until(lambda: _ready(http) or cli.poll() is not None, 300) and cli.poll() is None, log.read_text()
        server_pid = int(re.search(r"pid (\d+)", log.read_text()).group(1))
        config = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/bucketserve_tiny/config").read())
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        assert params["policy"] == "static" and params["max_num_seqs"] == "4"
        assert params["scheduler.max_queue_delay_s"] == "0"
        r = GrpcClient(f"127.0.0.1:{grpc}", "bucketserve_tiny").generate("hi", max_tokens=3, ignore_eos=True)
        assert r.ok and r.num_output_tokens == 3

        assert wait_until(lambda: "[bucketserve] serving" in log.read_text(), 60)  # past start-up: the forwarding path
        assert _ok(f"http://127.0.0.1:{openai}/health")  # the OpenAI-compatible API is up beside Triton
        cli.send_signal(sig)
        assert cli.wait(60) == 0, log.read_text()
        assert wait_until(lambda: process_gone(server_pid), 10)
        assert "server exited with code 0" in log.read_text()
        assert not _ok(f"http://127.0.0.1:{openai}/health")  # and stopped with it
    finally:
        if cli.poll() is None:
            cli.kill()
        if server_pid and not process_gone(server_pid):
            os.killpg(server_pid, signal.SIGKILL)
            time.sleep(0.5)
