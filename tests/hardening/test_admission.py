"""Admission control on a real server: past the queue caps a request gets UNAVAILABLE "queue full"
at once, and offline requests are shed first (they are admitted only up to
offline_queue_fraction of the caps, so online requests keep the rest of the queue).

The queue is made to hold still by memory pressure: the scripted probe leaves room for the one
long request that runs, so everything submitted after it waits."""

from __future__ import annotations

import threading

from bucketserve_client import GrpcClient

from .helpers import planned_bytes, prompt_of, wait_until

RUNNER_TOKENS = 2000
# Free bytes that leave room for the long runner (and the KV it holds) but for nothing beside it.
ROOM_FOR_ONE = planned_bytes([RUNNER_TOKENS + 8]) + 200_000
assert planned_bytes([RUNNER_TOKENS + 8, 16]) > ROOM_FOR_ONE + planned_bytes([RUNNER_TOKENS + 8]) // 4


def hold_queue(server):
    """Start one long request that occupies the only room; return its handle once it runs."""
    client = GrpcClient(server.grpc_url(), server.model)
    first = threading.Event()
    runner = client.start("the long one", stream=True, max_tokens=RUNNER_TOKENS, ignore_eos=True, on_delta=lambda _t: first.set())
    assert first.wait(60)
    server.set_free_bytes(ROOM_FOR_ONE)
    return client, runner


def queued(server, n):
    return wait_until(lambda: server.gauge("bucketserve_queue_requests") == n, 30)


def test_queue_caps_refuse_at_once_and_shed_offline_first(server):
    cap = server.settings["max_queue_requests"]
    offline_cap = -(-cap * server.settings["offline_queue_fraction"] // 1)  # ceil
    client, runner = hold_queue(server)
    waiting = []
    try:
        for i in range(int(offline_cap)):
            waiting.append(client.start(f"offline {i}", max_tokens=4, ignore_eos=True, request_class="offline"))
        assert queued(server, offline_cap)
        # The offline share is full: the next offline request is refused at once ...
        shed = client.generate("one offline too many", max_tokens=4, request_class="offline", timeout_s=30)
        assert shed.status == "error" and "queue full" in shed.error and "offline" in shed.error, shed.error
        # ... while online requests still get the rest of the queue, up to the full cap.
        for i in range(cap - int(offline_cap)):
            waiting.append(client.start(f"online {i}", max_tokens=4, ignore_eos=True, request_class="online"))
        assert queued(server, cap)
        for cls in ("online", "offline"):
            full = client.generate(f"{cls} past the cap", max_tokens=4, request_class=cls, timeout_s=30)
            assert full.status == "error" and "queue full" in full.error and str(cap) in full.error, full.error
    finally:
        server.set_free_bytes(1 << 30)
    # Memory back: every request that was let in completes.
    results = [w.result(120) for w in waiting]
    assert all(r.ok and r.num_output_tokens == 4 for r in results), [r.error for r in results if not r.ok]
    runner.cancel()
    assert wait_until(server.idle, 30)


def test_queued_token_cap(server):
    cap_tokens = server.settings["max_queue_tokens"]
    offline_tokens = -(-cap_tokens * server.settings["offline_queue_fraction"] // 1)
    client = GrpcClient(server.grpc_url(), server.model)
    long_prompt = prompt_of(300)
    t = client.generate(long_prompt, max_tokens=1).num_input_tokens  # prompt tokens per request
    k_off = int(offline_tokens // t)
    k_on = int((cap_tokens - k_off * t) // t)
    assert 0 < k_off and 0 < k_on and k_off + k_on < server.settings["max_queue_requests"]
    client, runner = hold_queue(server)
    waiting = []
    try:
        for _ in range(k_off):
            waiting.append(client.start(long_prompt, max_tokens=4, ignore_eos=True, request_class="offline"))
        assert queued(server, k_off)
        shed = client.generate(long_prompt, max_tokens=4, request_class="offline", timeout_s=30)
        assert shed.status == "error" and "queue full" in shed.error and "prompt tokens" in shed.error, shed.error
        for _ in range(k_on):
            waiting.append(client.start(long_prompt, max_tokens=4, ignore_eos=True, request_class="online"))
        assert queued(server, k_off + k_on)
        full = client.generate(long_prompt, max_tokens=4, request_class="online", timeout_s=30)
        assert full.status == "error" and "queue full" in full.error and str(cap_tokens) in full.error, full.error
    finally:
        server.set_free_bytes(1 << 30)
    results = [w.result(120) for w in waiting]
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    runner.cancel()
    assert wait_until(server.idle, 30)
