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

import numpy as np

from .metrics import RequestResult
from .workload import BenchRequest


def _bytes_tensor(grpcclient, name: str, value: str):
    t = grpcclient.InferInput(name, [1], "BYTES")
    t.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
    return t


def _tensor(grpcclient, name: str, value, dtype: str, np_dtype):
    t = grpcclient.InferInput(name, [1], dtype)
    t.set_data_from_numpy(np.array([value], dtype=np_dtype))
    return t


def _scalar(result, name: str):
    arr = result.as_numpy(name)
    if arr is None or arr.size == 0:
        return None
    v = arr.reshape(-1)[0]
    return v.decode() if isinstance(v, bytes) else v


class TritonGrpcClient:
    """Triton gRPC bidirectional streaming (tritonclient.grpc.aio), one stream per request."""

    protocol = "triton-grpc"

    def __init__(self, url: str, model: str = "bucketserve", send_slo: bool = True):
        import tritonclient.grpc.aio as grpcclient

        self._mod = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.model = model
        self.send_slo = send_slo

    def _inputs(self, req: BenchRequest) -> list:
        g = self._mod
        inputs = [
            _bytes_tensor(g, "text_input", req.prompt),
            _tensor(g, "max_tokens", req.output_tokens, "INT32", np.int32),
            _tensor(g, "min_tokens", req.output_tokens, "INT32", np.int32),
            _tensor(g, "ignore_eos", True, "BOOL", bool),
            _tensor(g, "stream", True, "BOOL", bool),
            _tensor(g, "temperature", 0.0, "FP32", np.float32),
            _bytes_tensor(g, "request_class", "online" if req.online else "offline"),
        ]
        if self.send_slo and req.slo_ttft_ms is not None:
            inputs.append(_tensor(g, "slo_ttft_ms", req.slo_ttft_ms, "FP32", np.float32))
        if self.send_slo and req.slo_tpot_ms is not None:
            inputs.append(_tensor(g, "slo_tpot_ms", req.slo_tpot_ms, "FP32", np.float32))
        return inputs

    async def send(self, req: BenchRequest, res: RequestResult, timeout_s: float) -> None:
        done = asyncio.Event()
        request = {"model_name": self.model, "inputs": self._inputs(req), "request_id": f"bench-{req.index}"}

        async def one_request():
            yield request
            await done.wait()  # keep the stream open until the final response

        t0 = time.perf_counter()
        stream = self.client.stream_infer(one_request())
        counted = 0
        async def read():
            nonlocal counted
            async for result, error in stream:
                now = time.perf_counter() - t0
                if error is not None:
                    res.error = str(error)
                    return
                text = _scalar(result, "text_output")
                if text:
                    counted += 1
                    res.token_times.append(now)
                    if res.ttft_s is None:
                        res.ttft_s = now
                n_out = _scalar(result, "num_output_tokens")
                if n_out is not None:
                    res.output_tokens = int(n_out)
                n_in = _scalar(result, "num_input_tokens")
                if n_in is not None:
                    res.server_prompt_tokens = int(n_in)
                reason = _scalar(result, "finish_reason")
                params = result.get_response().parameters
                final = "triton_final_response" in params and params["triton_final_response"].bool_param
                if final or reason:
                    if reason == "error":
                        res.error = "server finished the request with an error"
                    res.e2e_s = now
                    return

        try:
            await asyncio.wait_for(read(), timeout_s)
        except asyncio.TimeoutError:
            res.error = f"timed out after {timeout_s:.0f}s"
            stream.cancel()
        except Exception as exc:  # a transport error is one failed request, not a failed run
            res.error = f"{type(exc).__name__}: {exc}"
        finally:
            done.set()
        if res.error is None and res.e2e_s is None:
            res.error = "stream ended without a final response"
        if res.output_tokens == 0:
            res.output_tokens = counted

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
        counted = 0

        async def read():
            nonlocal counted
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
                            counted += 1
                            res.token_times.append(now)
                            if res.ttft_s is None:
                                res.ttft_s = now
                    usage = chunk.get("usage")
                    if usage:
                        res.output_tokens = int(usage.get("completion_tokens", 0))
                        res.server_prompt_tokens = int(usage.get("prompt_tokens", 0))

        try:
            await asyncio.wait_for(read(), timeout_s)
        except asyncio.TimeoutError:
            res.error = f"timed out after {timeout_s:.0f}s"
        except Exception as exc:
            res.error = f"{type(exc).__name__}: {exc}"
        if res.error is None and res.e2e_s is None:
            res.error = "stream ended without [DONE]"
        if res.output_tokens == 0:
            res.output_tokens = counted

    async def close(self) -> None:
        await self.session.close()
