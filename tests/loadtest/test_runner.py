"""The open-loop runner: sends at the planned offsets, never waits for replies to send,
and cuts a run off drain_s after its last arrival."""

from __future__ import annotations

import asyncio

from bucketserve_bench.runner import run_open_loop
from bucketserve_bench.workload import BenchRequest


class FakeClient:
    """Answers after `service[i]` seconds unless the timeout it is given runs out first."""

    def __init__(self, service):
        self.service = service
        self.timeouts = {}

    async def send(self, req, res, timeout_s):
        self.timeouts[req.index] = timeout_s
        try:
            await asyncio.wait_for(asyncio.sleep(self.service[req.index]), timeout_s)
            res.ttft_s = res.e2e_s = self.service[req.index]
            res.output_tokens = req.output_tokens
        except asyncio.TimeoutError:
            res.error = f"timed out after {timeout_s:.0f}s"

    async def close(self):
        pass


def reqs(n):
    return [BenchRequest(i, "p", 4, 3, online=bool(i % 2), source="t") for i in range(n)]


def test_open_loop_sends_on_schedule_and_cuts_off_stragglers():
    client = FakeClient({0: 0.01, 1: 30.0, 2: 0.01})
    offsets = [0.0, 0.0, 0.05]
    done = []
    results = asyncio.run(run_open_loop(client, reqs(3), offsets, request_timeout_s=600, on_done=done.append, drain_s=0.0))
    assert [r.error is None for r in results] == [True, False, True]
    assert results[1].error.startswith("timed out")
    assert client.timeouts[1] < 600  # bounded by the drain deadline, not the request timeout
    assert results[2].send_time >= 0.05  # sent at its offset even though request 1 was still running
    assert all(r.end_time is not None and r.end_time >= r.send_time for r in results)
    assert len(done) == 3
