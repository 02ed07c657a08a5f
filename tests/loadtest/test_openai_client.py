"""The bench's OpenAI client asks our server for what its gRPC client asks for (class, SLOs,
forced length), and asks vLLM only for what vLLM understands."""

from __future__ import annotations

import asyncio

from bucketserve_bench.clients import OpenAICompletionsClient
from bucketserve_bench.workload import BenchRequest


def _bodies(req):
    async def make():
        ours = OpenAICompletionsClient("http://127.0.0.1:1", "bucketserve", bucketserve_fields=True)
        vllm = OpenAICompletionsClient("http://127.0.0.1:1", "bench-model")
        try:
            return ours.body(req), vllm.body(req)
        finally:
            await ours.close()
            await vllm.close()

    return asyncio.run(make())


def test_bucketserve_fields_ride_along_only_for_our_server():
    online = BenchRequest(0, "hello", 5, 7, online=True, source="t", slo_ttft_ms=100.0, slo_tpot_ms=20.0)
    ours, vllm = _bodies(online)
    assert ours["request_class"] == "online" and ours["slo_ttft_ms"] == 100.0 and ours["slo_tpot_ms"] == 20.0
    assert ours["max_tokens"] == ours["min_tokens"] == 7 and ours["ignore_eos"] is True and ours["stream"] is True
    assert not {"request_class", "slo_ttft_ms", "slo_tpot_ms"} & set(vllm)
    offline = BenchRequest(1, "hello", 5, 7, online=False, source="t")
    ours, _ = _bodies(offline)
    assert ours["request_class"] == "offline" and "slo_ttft_ms" not in ours
