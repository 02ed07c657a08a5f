"""Hardening tests run against real tritonservers started through the launcher's Python API
(the same start_server the integration suite uses), hosting only the tiny test model with
settings that make limits reachable: small queue caps, a short max_model_len, and a free-memory
probe the tests script through a file (memory_probe file:<path>)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bucket_scheduler.serving.launcher import ServerOptions, start_server

from .helpers import ServerUnderTest

HERE = Path(__file__).parent
MODEL = "bucketserve_tiny"
PLENTY = 1 << 30  # free bytes the scripted probe reports when there is no pressure

# What the shared hardening server runs with (config.pbtxt parameters, as strings).
SETTINGS = {
    "max_model_len": "2048",
    "max_num_seqs": "8",
    "max_queue_requests": "24",
    "max_queue_tokens": "6000",
    "offline_queue_fraction": "0.5",
    "memory_fraction": "1.0",
    "dtype": "float32",  # the KV plan below (helpers.planned_bytes) assumes 4-byte values
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def launch(tmp_path_factory, name: str, settings: dict[str, str], env: dict[str, str] | None = None,
           exit_timeout_s: int = 10, openai_port: int | None = None) -> ServerUnderTest:
    run_dir = tmp_path_factory.mktemp(name)
    probe_file = run_dir / "free_bytes"
    probe_file.write_text(str(PLENTY))
    overrides = {MODEL: {**settings, "memory_probe": f"file:{probe_file}"}}
    with pytest.MonkeyPatch.context() as mp:  # the server (and its stub) inherit the environment
        for k, v in (env or {}).items():
            mp.setenv(k, v)
        handle = start_server(ServerOptions(models=[MODEL], overrides=overrides, host="127.0.0.1", http_port=0, grpc_port=0,
                                            metrics_port=0, run_dir=run_dir, exit_timeout_s=exit_timeout_s, ready_timeout_s=300,
                                            openai_port=openai_port), log=lambda _m: None)
    return ServerUnderTest(handle, MODEL, probe_file, {k: _number(v) for k, v in settings.items()})


def _number(text: str):
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


@pytest.fixture(scope="package")  # stopped before other test directories start their servers
def hserver(tmp_path_factory):
    srv = launch(tmp_path_factory, "hardening-run", SETTINGS, openai_port=0)  # OpenAI API too: its 503s
    try:
        yield srv
    finally:
        code = srv.handle.stop()
        print(f"\nhardening tritonserver exit code {code}; log tail:\n{srv.handle.log_tail(10)}")


@pytest.fixture
def server(hserver):
    """Per test: the shared server with no memory pressure, and it must still be up afterwards."""
    hserver.set_free_bytes(PLENTY)
    yield hserver
    hserver.set_free_bytes(PLENTY)
    assert hserver.handle.alive(), f"tritonserver died:\n{hserver.handle.log_tail()}"
    assert hserver.handle.ready(), f"tritonserver not ready:\n{hserver.handle.log_tail()}"
