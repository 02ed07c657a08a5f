"""Memory pressure through the scripted free-memory probe (memory_probe file:<path>): when the
probe reports less, the running batch shrinks at once by preempting the most recently admitted
sequences, which wait and are recomputed (prompt + tokens so far) when memory returns; new
arrivals wait too. The KV in use never exceeds the budget, every request still completes with
the text it would have had, and a request that can never fit is refused at admission."""

from __future__ import annotations

import threading

from bucketserve_client import GrpcClient

from .helpers import planned_bytes, prompt_of, wait_until

N, MAX_TOKENS = 8, 600


def test_pressure_preempts_and_recomputes_without_losing_anything(server):
    client = GrpcClient(server.grpc_url(), server.model)
    prompts = [prompt_of(4 + i, seed=i) for i in range(N)]
    reference = [client.start(p, max_tokens=MAX_TOKENS, ignore_eos=True) for p in prompts]
    reference = [g.result(300) for g in reference]
    assert all(r.ok for r in reference)
    assert wait_until(server.idle, 30)

    firsts = [threading.Event() for _ in prompts]
    gens = [client.start(p, stream=True, max_tokens=MAX_TOKENS, ignore_eos=True, on_delta=lambda _t, e=e: e.set())
            for p, e in zip(prompts, firsts)]
    assert all(e.wait(120) for e in firsts)
    assert wait_until(lambda: server.gauge("bucketserve_batch_size") == N, 30)

    # The probe now reports room for two of these sequences. The budget also counts the KV
    # buffer the engine holds (rows_cap x width, with growth headroom), so the batch settles at
    # 2 to 4 of 8: whatever the plan says fits, never more.
    worst = MAX_TOKENS + 12
    samples = []

    def sample():
        s = server.metrics()
        kv, budget = server.gauge("bucketserve_kv_bytes_in_use", s), server.gauge("bucketserve_kv_budget_bytes", s)
        batch, queue = server.gauge("bucketserve_batch_size", s), server.gauge("bucketserve_queue_requests", s)
        samples.append((kv, budget, batch, queue))
        return batch <= N // 2 and batch + queue == N

    try:
        server.set_free_bytes(planned_bytes([worst] * 2) + 50_000)
        assert wait_until(sample, 30), samples[-3:]
        # Nothing finished: the batch shrank because sequences were preempted back to the queue.
        assert server.gauge("bucketserve_inflight_requests") == N
        late = [client.start(f"late {i}", max_tokens=8, ignore_eos=True) for i in range(3)]
        for _ in range(10):  # while memory is short, the batch stays small
            sample()
            assert samples[-1][2] <= N // 2, samples[-1]
    finally:
        server.set_free_bytes(1 << 30)
    results = [g.result(300) for g in gens]
    for r, ref in zip(results, reference):
        assert r.ok and r.finish_reason == "length" and r.num_output_tokens == MAX_TOKENS, r
        assert r.text == ref.text  # recomputed, not resampled: the same greedy text
    assert all(g.result(60).ok for g in late)
    # The engine's invariant, seen from outside: the running batch's plan fits the budget.
    for kv, budget, batch, _queue in samples:
        assert kv <= budget and planned_bytes([worst] * int(batch)) <= budget, samples
    assert wait_until(server.idle, 30)


def test_request_that_can_never_fit_is_refused_at_admission(server):
    client = GrpcClient(server.grpc_url(), server.model)
    need = planned_bytes([4 + 600])
    server.set_free_bytes(need // 2)
    try:
        r = client.generate("too big for the memory left", max_tokens=600, timeout_s=30)
        assert r.status == "error" and "can never be scheduled" in r.error and "budget" in r.error, r.error
        assert str(need // 2) in r.error  # the limit, in bytes
        small = client.generate("small enough", max_tokens=4, ignore_eos=True)
        assert small.ok and small.num_output_tokens == 4
    finally:
        server.set_free_bytes(1 << 30)
