"""asyncio gRPC streaming client for a BucketServe model (tritonclient.grpc.aio underneath).

    client = AsyncGrpcClient("127.0.0.1:8001", model="bucketserve")
    async for chunk in client.stream("Tell me a story", max_tokens=64):
        print(chunk.text, end="")           # the last chunk has final=True and the token counts
    await client.close()

One channel for the client, one gRPC stream per request (many requests run at once on the
channel). Closing the iterator early (break, task cancelled, client gone) cancels the stream,
which Triton turns into a cancel of the request in the engine. `parameters` are sent as Triton
request parameters, untyped: the model's validator judges them exactly as it judges inputs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from .client import DEFAULT_GRPC_URL, DEFAULT_MODEL, GenerationResult, _scalar, grpc_inputs, request_fields


@dataclass
class StreamChunk:
    text: str = ""
    final: bool = False
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None


class RequestFailed(Exception):
    """The server answered the request with an error (its message is the model's or Triton's);
    `code` is its gRPC status code name (INVALID_ARGUMENT, UNAVAILABLE, INTERNAL, ...) when known."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message, self.code = message, code


# Asks Triton to end a failed stream with the error's code as the gRPC status, instead of an
# error message alone in the stream (which carries no code).
STATUS_HEADERS = {"triton_grpc_error": "true"}


class AsyncGrpcClient:
    def __init__(self, url: str = DEFAULT_GRPC_URL, model: str = DEFAULT_MODEL):
        self.url, self.model = url, model
        self._client = None

    def _triton(self):
        if self._client is None:  # created inside the running loop: grpc.aio binds the channel to it
            import tritonclient.grpc.aio as aio

            self._client = aio.InferenceServerClient(self.url)
        return self._client

    async def server_ready(self) -> bool:
        try:
            return bool(await self._triton().is_server_ready(client_timeout=2.0))
        except Exception:  # noqa: BLE001 - not reachable is not ready
            return False

    async def model_ready(self, model: str | None = None) -> bool:
        try:
            return bool(await self._triton().is_model_ready(model or self.model, client_timeout=2.0))
        except Exception:  # noqa: BLE001
            return False

    async def ready_models(self) -> list[str]:
        """Names of the models the server has loaded and ready."""
        index = await self._triton().get_model_repository_index(as_json=True, client_timeout=5.0)
        return sorted(m["name"] for m in index.get("models", []) if m.get("state") == "READY")

    async def stream(self, prompt: str, stream: bool = True, max_tokens: int | None = None, request_class: str | None = None,
                     model: str | None = None, parameters: dict[str, Any] | None = None, **options: Any) -> AsyncIterator[StreamChunk]:
        """Yield a chunk per text delta (stream=True) and always a last one with final=True.
        Raises RequestFailed when the server answers with an error."""
        import tritonclient.grpc as grpcclient

        inputs = grpc_inputs(grpcclient, prompt, request_fields(stream, max_tokens, request_class, **options))
        done = asyncio.Event()

        async def requests():
            yield {"model_name": model or self.model, "inputs": inputs, "parameters": parameters or None}
            await done.wait()  # keep our side open until the final: a half-closed stream is not waited on by every server

        import grpc

        responses = self._triton().stream_infer(requests(), headers=STATUS_HEADERS)
        finished = False
        try:
            try:
                async for result, error in responses:
                    if error is not None:
                        finished = True
                        raise RequestFailed(error.message() if hasattr(error, "message") else str(error), "UNKNOWN")
                    chunk = _chunk(result)
                    finished = chunk.final
                    yield chunk
                    if finished:
                        return
            except grpc.RpcError as exc:  # the request's error, or the stream itself broke (server gone)
                finished = True
                code = exc.code().name if hasattr(exc, "code") and exc.code() else "UNKNOWN"
                raise RequestFailed(exc.details() if hasattr(exc, "details") else str(exc), code) from None
            finished = True
            raise RequestFailed("the server closed the stream before the final response", "UNAVAILABLE")
        finally:
            done.set()
            if not finished:
                responses.cancel()  # the caller went away: Triton cancels the request

    async def generate(self, prompt: str, stream: bool = False, max_tokens: int | None = None, request_class: str | None = None,
                       model: str | None = None, parameters: dict[str, Any] | None = None, **options: Any) -> GenerationResult:
        """The whole answer with client-side timing, like GrpcClient.generate; errors in .status."""
        start = time.perf_counter()
        first = last = None
        result, parts = GenerationResult(), []
        try:
            async for chunk in self.stream(prompt, stream, max_tokens, request_class, model, parameters, **options):
                if chunk.text:
                    last = time.perf_counter()
                    first = first or last
                    result.chunks += 1
                    parts.append(chunk.text)
                if chunk.final:
                    result.finish_reason = chunk.finish_reason
                    result.num_input_tokens, result.num_output_tokens = chunk.num_input_tokens, chunk.num_output_tokens
        except RequestFailed as exc:
            result.status, result.error, result.error_code = "error", exc.message, exc.code
        result.text = "".join(parts)
        result.e2e_s = time.perf_counter() - start
        if first is not None:
            result.ttft_s = first - start
            n = result.num_output_tokens or 0
            if n > 1 and result.chunks > 1:
                result.tpot_s = (last - first) / (n - 1)
        return result

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _chunk(result) -> StreamChunk:
    chunk = StreamChunk()
    text = result.as_numpy("text_output")
    if text is not None and text.size:
        chunk.text = b"".join(bytes(x) for x in text.reshape(-1)).decode("utf-8", errors="replace")
    for name in ("finish_reason", "num_input_tokens", "num_output_tokens"):
        value = result.as_numpy(name)
        if value is not None and value.size:
            v = _scalar(value.reshape(-1)[0])
            setattr(chunk, name, v.decode() if isinstance(v, bytes) else int(v))
    # The model sends its final with finish_reason set (errors come as errors), so that is the end.
    chunk.final = chunk.finish_reason is not None
    return chunk
