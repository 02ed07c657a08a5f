"""One real tritonserver for the whole integration session, started through the launcher's
Python API on ports the OS picks, hosting both models; always stopped (process group and all)."""

from __future__ import annotations

import pytest

from bucket_scheduler.serving.launcher import start_server

MODELS = ["bucketserve", "bucketserve_tiny"]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("triton-run")
    handle = start_server(models=MODELS, host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=0, run_dir=run_dir,
                          exit_timeout_s=10, ready_timeout_s=600)
    try:
        yield handle
    finally:
        code = handle.stop()
        print(f"\ntritonserver exit code {code}; log tail:\n{handle.log_tail(15)}")


@pytest.fixture(autouse=True)
def server_survives(request):
    """After every test that used the server: it is still running and ready."""
    yield
    if "server" in request.fixturenames:
        handle = request.getfixturevalue("server")
        assert handle.alive(), f"tritonserver died:\n{handle.log_tail()}"
        assert handle.ready(), f"tritonserver not ready:\n{handle.log_tail()}"
