"""One real tritonserver for the whole integration session, started through the launcher's
Python API on ports the OS picks, hosting both models, with the OpenAI-compatible API beside it;
always stopped (process group and all)."""

from __future__ import annotations

import pytest

from bucket_scheduler.serving.launcher import ServerError, ServerOptions, start_server

MODELS = ["bucketserve", "bucketserve_tiny"]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    handle = None
    for attempt in range(2):  # a free port can be taken by another process before the server binds it
        try:
            handle = start_server(ServerOptions(
                models=MODELS, host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=0,
                run_dir=tmp_path_factory.mktemp("triton-run"), exit_timeout_s=10, ready_timeout_s=600,
                openai_port=0))  # the OpenAI-compatible API too, on a free port
            break
        except ServerError as exc:
            if attempt or "in use" not in str(exc).lower():
                raise
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
