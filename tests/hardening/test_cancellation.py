"""Cancellation storms on a real server: hundreds of gRPC stream cancels (before and after the
first token) and HTTP clients that hang up mid-stream leave no slot, queue entry, KV memory,
thread or file descriptor behind (checked server-side: gauges, and the server's and stub's
thread and fd counts through psutil)."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from bucketserve_client import GrpcClient

from .helpers import back_to, prompt_of, returned, wait_until


def warm_up(server) -> dict[str, int]:
    """Touch every path once (gRPC, HTTP, cancel) so lazily created pools exist; return the idle
    thread and fd counts."""
    client = GrpcClient(server.grpc_url(), server.model)
    for stream in (False, True):
        assert client.generate("warm up", stream=stream, max_tokens=3).ok
    first = threading.Event()
    g = client.start("warm up cancel", stream=True, max_tokens=500, ignore_eos=True, on_delta=lambda _t: first.set())
    first.wait(30)
    g.cancel()
    g.result(10)
    # One burst at the storm's concurrency, so that the server's thread pools have grown to
    # what that concurrency needs before the idle counts are taken (a pool is not a leak).
    burst = [client.start(f"burst {i}", stream=True, max_tokens=200, ignore_eos=True) for i in range(16)]
    hangups = [threading.Thread(target=http_hang_up, args=(server, f"burst {i}", i % 2 == 0)) for i in range(16)]
    for t in hangups:
        t.start()
    for b in burst:
        b.cancel()
        b.result(30)
    for t in hangups:
        t.join()
    assert wait_until(server.idle, 30)
    return server.resources()


def http_hang_up(server, prompt: str, after_first_event: bool) -> bool:
    """POST generate_stream on a raw socket and close it: after the first SSE event, or at once.
    Returns whether an event had arrived."""
    # stream=true: Triton 2.51 notices a hang-up only when it writes to the socket, so a
    # non-streaming /generate request runs to its end (docs/reliability.md, "Cancellation").
    body = json.dumps({"text_input": prompt, "max_tokens": 1500, "ignore_eos": True, "stream": True}).encode()
    head = (f"POST /v2/models/{server.model}/generate_stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    got = False
    with socket.create_connection(("127.0.0.1", server.handle.http_port), timeout=60) as s:
        s.sendall(head + body)
        if after_first_event:
            buf = b""
            while b"data:" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            got = b"data:" in buf
    return got


def storm(server, waves: int, per_wave: int, http_hangups: int) -> dict:
    baseline = warm_up(server)
    before = server.settled_outcomes()
    client = GrpcClient(server.grpc_url(), server.model)
    sent = {"grpc_rejected": 0, "grpc_finished_first": 0, "grpc_cancel_at_once": 0, "grpc_cancel_after_token": 0, "http_hang_up_at_once": 0, "http_hang_up_after_token": 0}
    for w in range(waves):
        gens = []
        for i in range(per_wave):
            first = threading.Event()
            late = (i + w) % 2 == 0
            g = client.start(prompt_of(5 + i % 20, seed=i), stream=True, max_tokens=1900, ignore_eos=True,
                             request_class="online" if i % 3 else "offline", on_delta=lambda _t, e=first: e.set())
            gens.append((g, first, late))
        for g, first, late in gens:
            if late:  # wait for a token (or a "queue full" answer, which is a final too)
                assert wait_until(lambda: first.is_set() or g._done.is_set(), 120), "no first token"
            g.cancel()
            sent["grpc_cancel_after_token" if late and first.is_set() else "grpc_cancel_at_once"] += 1
        for g, _first, _late in gens:
            r = g.result(30)
            if r.status == "error":
                assert "queue full" in r.error, r
                sent["grpc_rejected"] += 1
            elif r.status == "ok":  # it ran to its end before its turn to be cancelled came
                assert r.num_output_tokens == 1900, r
                sent["grpc_finished_first"] += 1
            else:
                assert r.status == "cancelled", r
    threads = []
    for i in range(http_hangups):
        after = i % 2 == 0
        sent["http_hang_up_after_token" if after else "http_hang_up_at_once"] += 1
        threads.append(threading.Thread(target=http_hang_up, args=(server, prompt_of(8, seed=i), after)))
        threads[-1].start()
        if len(threads) >= 16:
            for t in threads:
                t.join()
            threads = []
    for t in threads:
        t.join()

    # Server side: every accepted request got its final (nothing in flight), the slots and the
    # KV memory are free, nothing failed, and every request that had produced a token is
    # counted as cancelled (the others may have been cancelled before the model saw them).
    after = server.settled_outcomes()
    delta = {k: after[k] - before[k] for k in after}
    # (a request cancelled at once may have been refused "queue full" before the cancel arrived)
    assert delta["error"] == 0 and delta["invalid"] == 0 and delta["rejected"] >= sent["grpc_rejected"], delta
    assert delta["cancelled"] >= sent["grpc_cancel_after_token"] + sent["http_hang_up_after_token"], (delta, sent)
    assert delta["success"] == sent["grpc_finished_first"], (delta, sent)  # no cancelled request ran on
    final = back_to(server, baseline, 60)
    assert returned(final, baseline), (final, baseline)
    # A normal request still works.
    assert client.generate("after the storm", max_tokens=4, ignore_eos=True).num_output_tokens == 4
    return {"sent": sent, "server_outcomes": delta, "baseline": baseline, "after": final}


def test_cancellation_storm(server):
    out = storm(server, waves=10, per_wave=16, http_hangups=64)
    print(f"\ncancellation storm: {out}")
    assert sum(out["sent"].values()) >= 200


@pytest.mark.slow
def test_cancellation_storm_long(server):
    out = storm(server, waves=60, per_wave=16, http_hangups=500)
    print(f"\ncancellation storm (long): {out}")
