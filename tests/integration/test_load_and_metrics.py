"""Concurrency, cancellation and metrics against a real tritonserver.

Long form (kept out of CI): pytest -m slow tests/integration -k long

The concurrency test guards a known hazard: two threads updating one pb_utils.Metric can crash
the server; the adapter updates metrics from one thread only."""

import threading

import pytest

from bucket_scheduler.serving.metrics import SPECS
from bucketserve_client import GrpcClient, HttpClient

from .helpers import scrape, value, wait_until


def counters(server, model):
    s = scrape(server.metrics_url)
    out = {o: value(s, "bucketserve_requests_total", model=model, outcome=o) for o in ("success", "cancelled", "invalid", "error", "rejected")}
    out["prompt"] = value(s, "bucketserve_prompt_tokens_total", model=model)
    out["generated"] = value(s, "bucketserve_generation_tokens_total", model=model)
    out["ttft_count"] = value(s, "bucketserve_time_to_first_token_seconds_count", model=model)
    out["e2e_count"] = value(s, "bucketserve_e2e_request_latency_seconds_count", model=model)
    return out


def idle(server, model):
    s = scrape(server.metrics_url)
    return all(value(s, name, model=model) == 0 for name in
               ("bucketserve_inflight_requests", "bucketserve_batch_size", "bucketserve_queue_requests", "bucketserve_kv_bytes_in_use"))


@pytest.mark.parametrize("model, rounds, max_tokens", [
    ("bucketserve_tiny", 8, 48),
    ("bucketserve", 2, 6),
    pytest.param("bucketserve_tiny", 60, 64, marks=pytest.mark.slow, id="long-tiny-60-rounds"),
])
def test_32_concurrent_streams_with_cancels(server, model, rounds, max_tokens):
    client = GrpcClient(server.grpc_url, model)
    http = HttpClient(server.http_url, model)
    before = counters(server, model)
    completed, cancelled = [], []
    for rnd in range(rounds):
        results, lock = [None] * 32, threading.Lock()

        def worker(i):
            victim = i % 4 == rnd % 4  # a different quarter of the clients cancels each round
            if not victim and i % 8 == (rnd + 1) % 8:  # some HTTP generate_stream clients in the mix
                r = http.generate(f"request {i} of round {rnd} over http", stream=True, max_tokens=max_tokens, ignore_eos=True)
                with lock:
                    results[i] = (False, r)
                return
            first = threading.Event()
            gen = client.start(f"request {i} of round {rnd}: tell me about buckets", stream=True,
                               max_tokens=1500 if victim else max_tokens, ignore_eos=True,
                               request_class="online" if i % 2 else "offline", on_delta=lambda _t: first.set())
            if victim:
                first.wait(120)
                gen.cancel()
            r = gen.result(300)
            with lock:
                results[i] = (victim, r)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for victim, r in results:
            if victim:
                assert r.status == "cancelled"
                cancelled.append(r)
            else:
                assert r.ok, r.error
                assert r.finish_reason == "length" and r.num_output_tokens == max_tokens and r.text
                completed.append(r)
        assert server.alive() and server.ready()

    # Every cancel reached the engine and was answered with one CANCELLED final; the slots are free.
    assert wait_until(lambda: counters(server, model)["cancelled"] - before["cancelled"] == len(cancelled), 60)
    assert wait_until(lambda: idle(server, model), 60)
    after = counters(server, model)
    assert after["success"] - before["success"] == len(completed)
    assert after["error"] == before["error"] and after["rejected"] == before["rejected"]


def test_cancel_yields_cancelled_and_frees_the_slot(server):
    model = "bucketserve"
    client = GrpcClient(server.grpc_url, model)
    before = counters(server, model)
    first = threading.Event()
    gen = client.start("Write a very long story about a lighthouse.", stream=True, max_tokens=1500, ignore_eos=True,
                       on_delta=lambda _t: first.set())
    assert first.wait(120)
    s = scrape(server.metrics_url)
    assert wait_until(lambda: value(scrape(server.metrics_url), "bucketserve_batch_size", model=model) == 1, 30)
    assert value(s, "bucketserve_inflight_requests", model=model) == 1
    assert value(s, "bucketserve_kv_budget_bytes", model=model) > 0
    gen.cancel()
    assert gen.result(10).status == "cancelled"
    assert wait_until(lambda: counters(server, model)["cancelled"] == before["cancelled"] + 1, 30)
    assert wait_until(lambda: idle(server, model), 30)
    after = counters(server, model)
    assert after["success"] == before["success"] and after["error"] == before["error"]


def test_metrics_match_what_was_sent(server):
    model = "bucketserve_tiny"
    client = GrpcClient(server.grpc_url, model)
    samples = scrape(server.metrics_url)
    for spec in SPECS:  # every family is exported, for both models
        for m in ("bucketserve", "bucketserve_tiny"):
            name = spec.name + ("_count" if spec.kind == "histogram" else "")
            if spec.name != "bucketserve_queue_depth":
                value(samples, name, model=m, version="1")
    before = counters(server, model)
    lengths = [3, 5, 8, 13]
    results = [client.generate(f"count {n}", stream=n % 2 == 0, max_tokens=n, ignore_eos=True,
                               request_class="online", slo_ttft_ms=600000.0, slo_tpot_ms=0.0001) for n in lengths]
    assert all(r.ok for r in results)
    assert [r.num_output_tokens for r in results] == lengths
    invalid = client.generate("x", max_tokens=0)
    assert invalid.status == "error"
    # The sender updates the counters right after it sends a final: let the last one land.
    wait_until(lambda: idle(server, model) and counters(server, model)["invalid"] - before["invalid"] >= 1, timeout_s=10)
    after = counters(server, model)
    assert after["success"] - before["success"] == len(lengths)
    assert after["invalid"] - before["invalid"] == 1
    assert after["generated"] - before["generated"] == sum(lengths)
    assert after["prompt"] - before["prompt"] == sum(r.num_input_tokens for r in results)
    assert after["ttft_count"] - before["ttft_count"] == len(lengths) == after["e2e_count"] - before["e2e_count"]
    s = scrape(server.metrics_url)
    # A generous TTFT target is met by all; an impossible TPOT target is missed by all.
    assert value(s, "bucketserve_slo_met_total", model=model, slo="ttft") >= len(lengths)
    assert value(s, "bucketserve_slo_missed_total", model=model, slo="tpot") >= len(lengths)


def test_http_client_disconnect_cancels_the_request(server):
    """An HTTP generate_stream client that hangs up mid-answer: the server sees the request
    cancelled, the engine drops it, and the slot is free again."""
    import http.client
    import json

    model = "bucketserve_tiny"
    before = counters(server, model)
    host, port = server.http_url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", f"/v2/models/{model}/generate_stream",
                 body=json.dumps({"text_input": "hang up on me", "max_tokens": 2000, "ignore_eos": True, "stream": True}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    first = resp.readline()
    assert first.startswith(b"data:")
    conn.sock.close()  # hang up with the answer half sent
    conn.close()
    assert wait_until(lambda: counters(server, model)["cancelled"] == before["cancelled"] + 1, 60)
    assert wait_until(lambda: idle(server, model), 30)
    assert counters(server, model)["success"] == before["success"]
