"""Open-loop load: send every request at its planned time, whatever the server is doing.

Locust's users wait for a reply before sending again (closed loop), which hides queueing;
here a request goes out at its Poisson arrival time even if the server is behind, so
queueing delay shows up in TTFT the way users would see it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Protocol

from .metrics import RequestResult
from .workload import BenchRequest


class StreamingClient(Protocol):
    async def send(self, req: BenchRequest, res: RequestResult, timeout_s: float) -> None: ...

    async def close(self) -> None: ...


async def run_open_loop(
    client: StreamingClient,
    reqs: list[BenchRequest],
    offsets: list[float],
    request_timeout_s: float,
    on_done: Callable[[RequestResult], None] | None = None,
    drain_s: float | None = None,
) -> list[RequestResult]:
    """Send reqs[i] at offsets[i] seconds after the start; wait for all of them.

    drain_s bounds the run: whatever is still running drain_s after the last arrival is
    cancelled and recorded as timed out (an overloaded system would otherwise take
    unboundedly long to empty its queue)."""
    if len(reqs) != len(offsets):
        raise ValueError("one offset per request")
    start = time.perf_counter()
    results = [
        RequestResult(
            index=r.index,
            online=r.online,
            prompt_tokens=r.prompt_tokens,
            expected_output_tokens=r.output_tokens,
            send_time=off,
            slo_ttft_ms=r.slo_ttft_ms,
            slo_tpot_ms=r.slo_tpot_ms,
        )
        for r, off in zip(reqs, offsets)
    ]

    async def one(req: BenchRequest, res: RequestResult) -> None:
        delay = start + res.send_time - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        res.send_time = time.perf_counter() - start  # the actual send time
        timeout = request_timeout_s
        if drain_s is not None:
            timeout = min(timeout, max(1.0, offsets[-1] + drain_s - res.send_time))
        await client.send(req, res, timeout)
        res.end_time = time.perf_counter() - start
        if on_done is not None:
            on_done(res)

    await asyncio.gather(*(one(q, r) for q, r in zip(reqs, results)))
    return results


async def run_sequential(client: StreamingClient, reqs: list[BenchRequest], request_timeout_s: float) -> list[RequestResult]:
    """One request at a time on an idle server: the unloaded latency the SLOs are scaled from."""
    out = []
    for r in reqs:
        res = RequestResult(r.index, r.online, r.prompt_tokens, r.output_tokens, send_time=0.0)
        await client.send(r, res, request_timeout_s)
        out.append(res)
    return out
