"""FastAPI routes of the OpenAI-compatible API; every generation goes to Triton over gRPC.

A streaming answer starts (HTTP 200, SSE) only once the model's first response is in, so a
request the model refuses (bad input, queue full, draining) gets its proper status code and
OpenAI error body rather than an error event inside a 200. A client that goes away cancels its
gRPC stream, which Triton turns into a cancel in the engine.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Awaitable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bucketserve_client.aio import AsyncGrpcClient, RequestFailed

from .chat import ChatTemplates
from .errors import OpenAIError, bad_request, from_model_error, model_not_found, unavailable
from .responses import DONE, Answer, sse
from .translate import Call, chat_call, completion_call

DEFAULT_MAX_BODY_BYTES = 1 << 20
# How often a request still waiting for its first response looks for a client that went away
# (once streaming, the web server notices at once).
DISCONNECT_POLL_S = 0.2


@dataclass
class FrontendConfig:
    grpc_url: str
    models: list[str] = field(default_factory=list)  # served models; empty: whatever Triton has ready
    model_dirs: dict[str, str] = field(default_factory=dict)  # model -> tokenizer directory (chat templates)
    trust_remote_code: dict[str, bool] = field(default_factory=dict)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


class ClientGone(Exception):
    pass


def create_app(config: FrontendConfig) -> FastAPI:
    client = AsyncGrpcClient(config.grpc_url)
    chat = ChatTemplates(config.model_dirs, config.trust_remote_code)
    served: dict[str, Any] = {"models": list(config.models), "checked": 0.0}
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await asyncio.to_thread(chat.preload)
        yield
        await client.close()

    app = FastAPI(title="BucketServe OpenAI-compatible API", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(OpenAIError)
    async def _openai_error(_request: Request, exc: OpenAIError):
        headers = exc.headers()
        if exc.status == 413:
            headers["Connection"] = "close"  # the rest of the body is never read
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        return JSONResponse(OpenAIError(exc.status_code, str(exc.detail), "invalid_request_error").body(), status_code=exc.status_code)

    async def served_models(refresh: bool = False) -> list[str]:
        if config.models:
            return served["models"]
        if refresh or not served["models"] or time.monotonic() - served["checked"] > 5.0:
            try:
                served["models"] = await client.ready_models()
                served["checked"] = time.monotonic()
            except Exception as exc:  # noqa: BLE001
                raise unavailable(f"the inference server is not reachable: {exc}") from None
        return served["models"]

    async def check_model(body: dict) -> None:
        model = body.get("model")
        if isinstance(model, str) and model and model not in await served_models():
            if model not in await served_models(refresh=True):
                raise model_not_found(model, await served_models())

    @app.get("/health")
    async def health():
        ready = await client.server_ready()
        models = config.models or (await client.ready_models() if ready else [])
        if ready and models:
            ready = all(await asyncio.gather(*(client.model_ready(m) for m in models)))
        return Response(status_code=200 if ready else 503)

    @app.get("/v1/models")
    async def list_models():
        names = await served_models(refresh=True)
        return {"object": "list", "data": [_model_card(n, started) for n in names]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        names = await served_models(refresh=True)
        if model_id not in names:
            raise model_not_found(model_id, names)
        return _model_card(model_id, started)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_json(request, config.max_body_bytes)
        await check_model(body)
        return await generate(request, completion_call(body), is_chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_json(request, config.max_body_bytes)
        await check_model(body)
        return await generate(request, chat_call(body, chat.render), is_chat=True)

    async def generate(request: Request, call: Call, is_chat: bool):
        answer = Answer(model=call.model, chat=is_chat)
        gen = client.stream(call.prompt, stream=call.stream, model=call.model, parameters=call.parameters, **call.options)
        if not call.stream:
            try:
                chunks = await _unless_gone(request, _collect(gen))
            except RequestFailed as exc:
                raise from_model_error(exc.message, exc.code, call.param_names) from None
            except ClientGone:
                return Response(status_code=499)
            text = "".join(c.text for c in chunks)
            last = chunks[-1]
            return answer.full(text, last.finish_reason, last.num_input_tokens, last.num_output_tokens)
        try:
            first = await _unless_gone(request, gen.__anext__())
        except RequestFailed as exc:
            raise from_model_error(exc.message, exc.code, call.param_names) from None
        except ClientGone:
            await gen.aclose()
            return Response(status_code=499)
        return StreamingResponse(_events(gen, first, answer, call), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


async def read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object; past `limit` bytes it is refused (413) before any parsing."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise OpenAIError(413, f"request body of {int(length)} bytes is over the limit of {limit} bytes",
                          "invalid_request_error", None, "request_too_large")
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise OpenAIError(413, f"request body is over the limit of {limit} bytes", "invalid_request_error", None,
                              "request_too_large")
        parts.append(part)
    try:
        body = json.loads(b"".join(parts))
    except ValueError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


async def _collect(gen) -> list:
    async with aclosing(gen):
        return [chunk async for chunk in gen]


async def _unless_gone(request: Request, awaitable: Awaitable):
    """Await `awaitable`; if the client disconnects first, cancel it and raise ClientGone."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - cancelled on purpose
                pass


async def _events(gen, chunk, answer: Answer, call: Call):
    async with aclosing(gen):
        if answer.chat:
            yield sse(answer.chunk(text="", role=True))
        while True:
            if chunk.text:
                yield answer.delta_event(chunk.text)
            if chunk.final:
                yield sse(answer.chunk(text=None if answer.chat else "", finish_reason=chunk.finish_reason))
                if call.include_usage:
                    yield sse(answer.usage_chunk(chunk.num_input_tokens, chunk.num_output_tokens))
                break
            try:
                chunk = await gen.__anext__()
            except RequestFailed as exc:  # after the 200 went out: an error event, then the end
                yield sse(from_model_error(exc.message, exc.code, call.param_names).body())
                break
        yield DONE


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "bucketserve"}
