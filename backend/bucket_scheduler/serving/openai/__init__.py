"""OpenAI-compatible HTTP front end: /v1/models, /v1/completions, /v1/chat/completions, /health.

A separate asyncio process that forwards every request to tritonserver over gRPC streaming
(bucketserve_client.aio), so Triton's metrics, multi-model hosting and the model's sender
guarantees hold for this path as for any Triton client. Modules: translate (OpenAI body ->
model inputs), errors (model / Triton errors -> OpenAI error answers), chat (chat templates),
responses (answer bodies and SSE chunks), app (FastAPI routes), server (process entry point).
"""
