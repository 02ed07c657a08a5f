"""Async streaming clients, one per protocol the bench speaks.

Each send() streams one request and fills a RequestResult: time to the first text,
time to the end, the server's token counts.  Both force the output to the workload's
length the same way (ignore EOS, min_tokens = max_tokens = the trace's output length,
greedy), so every system generates exactly the same number of tokens.
"""

from __future__ import annotations

import asyncio
import json
import time

from bucketserve_client import AsyncGrpcClient, RequestFailed

from .metrics import RequestResult
from .workload import BenchRequest


async def timed(read, res: RequestResult, timeout_s: float) -> None:
    """Run one request's reader under the timeout; a failure is this request's error, not the run's."""
    try:
        await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        res.error = f"timed out after {timeout_s:.0f}s"
    except RequestFailed as exc:
        res.error = exc.message
    except Exception as exc:  # a transport error is one failed request, not a failed run
        res.error = f"{type(exc).__name__}: {exc}"
    if res.error is None and res.e2e_s is None:
        res.error = "stream ended without a final response"
    if res.output_tokens == 0:
        res.output_tokens = len(res.token_times)


def got_text(res: RequestResult, now: float) -> None:
    res.token_times.append(now)
    if res.ttft_s is None:
        res.ttft_s = now


class TritonGrpcClient:
    """Triton gRPC streaming through our own client library (bucketserve_client.AsyncGrpcClient)."""

    protocol = "triton-grpc"

    def __init__(self, url: str, model: str = "bucketserve", send_slo: bool = True):
        self.client = AsyncGrpcClient(url, model)
        self.send_slo = send_slo

    def fields(self, req: BenchRequest) -> dict:
        fields = dict(max_tokens=req.output_tokens, min_tokens=req.output_tokens, ignore_eos=True, temperature=0.0,
                      request_class="online" if req.online else "offline")
        if self.send_slo:
            fields.update(slo_ttft_ms=req.slo_ttft_ms, slo_tpot_ms=req.slo_tpot_ms)  # None: not sent
        return fields

    async def send(self, req: BenchRequest, res: RequestResult, timeout_s: float) -> None:
        t0 = time.perf_counter()

        async def read():
            async for chunk in self.client.stream(req.prompt, stream=True, **self.fields(req)):
                now = time.perf_counter() - t0
                if chunk.text:
                    got_text(res, now)
                if chunk.final:
                    res.output_tokens = chunk.num_output_tokens or 0
                    res.server_prompt_tokens = chunk.num_input_tokens
                    res.e2e_s = now

        await timed(read, res, timeout_s)  # a timeout cancels the stream, which cancels the request

    async def close(self) -> None:
        await self.client.close()


class OpenAICompletionsClient:
    """OpenAI /v1/completions streaming, via aiohttp: vLLM's API server, or BucketServe's
    (bucketserve_fields: also the request class and SLO targets, as extra body fields)."""

    protocol = "openai"

    def __init__(self, base_url: str, model: str, bucketserve_fields: bool = False):
        import aiohttp

        self._aiohttp = aiohttp
        self.url = base_url.rstrip("/") + "/v1/completions"
        self.model = model
        self.bucketserve_fields = bucketserve_fields
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
        )

    def body(self, req: BenchRequest) -> dict:
        body = {
            "model": self.model,
            "prompt": req.prompt,
            "max_tokens": req.output_tokens,
            "min_tokens": req.output_tokens,  # vLLM extension
            "ignore_eos": True,  # vLLM extension
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.bucketserve_fields:  # what TritonGrpcClient sends, so both paths ask for the same
            body["request_class"] = "online" if req.online else "offline"
            if req.slo_ttft_ms is not None:
                body["slo_ttft_ms"] = req.slo_ttft_ms
            if req.slo_tpot_ms is not None:
                body["slo_tpot_ms"] = req.slo_tpot_ms
        return body

    async def send(self, req: BenchRequest, res: RequestResult, timeout_s: float) -> None:
        t0 = time.perf_counter()

        async def read():
            async with self.session.post(self.url, json=self.body(req)) as resp:
                if resp.status != 200:
                    res.error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
                    return
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        res.e2e_s = time.perf_counter() - t0
                        return
                    chunk = json.loads(data)
                    now = time.perf_counter() - t0
                    for choice in chunk.get("choices") or []:
                        if choice.get("text"):
                            got_text(res, now)
                    usage = chunk.get("usage")
                    if usage:
                        res.output_tokens = int(usage.get("completion_tokens", 0))
                        res.server_prompt_tokens = int(usage.get("prompt_tokens", 0))

        await timed(read, res, timeout_s)

    async def close(self) -> None:
        await self.session.close()
