"""Engine faults on a real server, injected through the test-only hook (environment variable
BUCKETSERVE_TEST_FAULTS=1, off by default: a model step whose batch holds a prompt with the
marker raises). A failed step fails the requests of that step's batch with an error final and
the engine keeps serving; after MAX_CONSECUTIVE_FAULTS failed steps in a row the model refuses
every request at once with UNAVAILABLE instead of hanging (Triton 2.51 gives a Python model no
way to turn itself not-ready: docs/reliability.md), and serves again by itself once a canary
step succeeds after a backoff. BUCKETSERVE_TEST_FAULT_FILE names a file whose presence fails
every model step, canaries included: a fault that is no request's input."""

from __future__ import annotations

import threading
import time

import pytest

from bucket_scheduler.runtime.admission import MAX_CONSECUTIVE_FAULTS
from bucket_scheduler.runtime.faults import FAULT_ENV, FAULT_FILE_ENV, FAULT_MARKER
from bucketserve_client import GrpcClient, HttpClient

from .conftest import SETTINGS, launch
from .helpers import wait_until


BACKOFF_S = 1.0


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory):
    fault_file = tmp_path_factory.mktemp("faults") / "device-lost"
    srv = launch(tmp_path_factory, "fault-run", {**SETTINGS, "max_num_seqs": "2", "fault_backoff_s": str(BACKOFF_S)},
                 env={FAULT_ENV: "1", FAULT_FILE_ENV: str(fault_file)})
    srv.fault_file = fault_file
    try:
        yield srv
    finally:
        srv.handle.stop()


def test_a_fault_fails_only_its_batch_and_the_engine_keeps_serving(fault_server):
    srv = fault_server
    client = GrpcClient(srv.grpc_url(), srv.model)
    before = srv.settled_outcomes()
    bad = client.generate(f"please fail {FAULT_MARKER}", max_tokens=8, timeout_s=60)
    assert bad.status == "error" and "injected fault" in bad.error, bad
    assert client.generate("fine again", max_tokens=5, ignore_eos=True).num_output_tokens == 5

    # A running request shares the failed step's batch; requests still queued behind it do not.
    first = threading.Event()
    running = client.start("running long", stream=True, max_tokens=1500, ignore_eos=True, on_delta=lambda _t: first.set())
    assert first.wait(60)
    marked = client.start(f"fail in prefill {FAULT_MARKER}", max_tokens=8)
    queued = [client.start(f"queued {i}", max_tokens=6, ignore_eos=True) for i in range(3)]
    assert "injected fault" in (marked.result(60).error or "")
    r = running.result(60)
    assert r.status == "error" and "injected fault" in r.error, r
    assert all(q.result(60).num_output_tokens == 6 for q in queued)
    after = srv.settled_outcomes()
    assert after["error"] - before["error"] == 3 and after["success"] - before["success"] == 4, (before, after)
    assert wait_until(srv.idle, 30)
    assert srv.handle.alive() and srv.handle.ready()


def test_repeated_faults_make_the_model_refuse_at_once(fault_server):
    srv = fault_server
    client = GrpcClient(srv.grpc_url(), srv.model)
    for i in range(MAX_CONSECUTIVE_FAULTS):
        r = client.generate(f"fault {i} {FAULT_MARKER}", max_tokens=4, timeout_s=60)
        assert r.status == "error" and "injected fault" in r.error, r
    for c in (client, HttpClient(srv.handle.http_url, srv.model)):
        refused = c.generate("a healthy request", max_tokens=4)
        assert refused.status == "error" and "unhealthy" in refused.error, refused
    # The server process is up and answers; nothing hangs (Triton still reports the model ready).
    assert srv.handle.alive()
    assert wait_until(lambda: srv.gauge("bucketserve_inflight_requests") == 0, 30)
    # The engine recovers on its own: a canary step after the backoff succeeds (no restart).
    assert wait_until(lambda: client.generate("healthy again", max_tokens=4, ignore_eos=True).ok, 30)


def test_a_lasting_fault_keeps_refusing_until_it_clears_then_serves_again(fault_server):
    srv = fault_server
    client = GrpcClient(srv.grpc_url(), srv.model)
    srv.fault_file.write_text("1")
    try:
        for i in range(MAX_CONSECUTIVE_FAULTS):
            r = client.generate(f"plain request {i}", max_tokens=4, timeout_s=60)
            assert r.status == "error" and "injected fault" in r.error, r
        refused = client.generate("while broken", max_tokens=4)
        assert "unhealthy" in (refused.error or ""), refused
        time.sleep(3 * BACKOFF_S)  # canaries ran and failed: still refusing
        refused = client.generate("still broken", max_tokens=4)
        assert "unhealthy" in (refused.error or ""), refused
    finally:
        srv.fault_file.unlink()
    assert wait_until(lambda: client.generate("fixed", max_tokens=4, ignore_eos=True).ok, 60)
    assert client.generate("and again", max_tokens=5, ignore_eos=True).num_output_tokens == 5
    assert srv.handle.alive() and srv.handle.ready()
