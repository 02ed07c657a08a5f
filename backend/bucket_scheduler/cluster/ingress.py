"""The cluster's OpenAI-compatible ingress (a Serve deployment with FastAPI routes).

It reads the body (the OpenAI layer's own size cap and JSON checks), estimates the prompt's
length, lets the length ranges observe it, and hands the body to the replicas' handle, whose
request router picks the replica. Translation, validation and streaming happen once, in the
chosen replica's OpenAI front end; bytes come back unchanged.

Faults: a request that could not start on its replica (server gone, replica actor dead) is sent
once more, to another replica; a second failure is one 503. A stream that breaks after its
first bytes ends with one error event and [DONE]. Every request gets exactly one answer.
"""

# No `from __future__ import annotations`: FastAPI must see the `Request` annotations of the
# methods Serve wraps as real types.

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from bucket_scheduler.serving.openai.app import DEFAULT_MAX_BODY_BYTES, read_json
from bucket_scheduler.serving.openai.errors import OpenAIError, model_not_found, unavailable

from .ranges import RangeConfig, prompt_length
from .replica import RETRY, sse_error
from .state import shared_state

REPLICA_DEPLOYMENT = "TritonReplica"
api = FastAPI(title="BucketServe cluster", docs_url=None, redoc_url=None, openapi_url=None)


@dataclass
class IngressConfig:
    replicas: int
    router: str
    models: list[str] = field(default_factory=list)
    max_len: int = 2048
    min_observations: int = 16
    split: str = "padding"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    state_key: str = "bucketserve"


@api.exception_handler(OpenAIError)
async def _openai_error(_request: Request, exc: OpenAIError):
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


@serve.ingress(api)
class ClusterIngress:
    def __init__(self, replicas, config: dict):
        self.config = IngressConfig(**config)
        self.handle = replicas.options(method_name="generate", stream=True)
        self.state = shared_state(self.config.state_key, self.config.replicas, self.config.router,
                                  RangeConfig(max_len=self.config.max_len, min_observations=self.config.min_observations,
                                              split=self.config.split))
        self._checked = 0.0

    # --- readiness ------------------------------------------------------------

    def _running_replicas(self) -> int:
        app = serve.get_replica_context().app_name
        status = serve.status().applications[app].deployments[REPLICA_DEPLOYMENT]
        return int(status.replica_states.get("RUNNING", 0))

    async def _all_ready(self) -> bool:
        """Once every replica was up, the cluster serves; until then requests get 503."""
        if not self.state.ever_all_ready and time.monotonic() - self._checked > 0.5:
            self._checked = time.monotonic()
            try:
                if await asyncio.to_thread(self._running_replicas) >= self.config.replicas:
                    self.state.ever_all_ready = True
            except Exception:  # noqa: BLE001 - the controller is busy: ask again next time
                pass
        return self.state.ever_all_ready

    async def _require_ready(self) -> None:
        if not await self._all_ready():
            raise unavailable(f"the cluster is starting: waiting for its {self.config.replicas} replicas to be ready")

    # --- routes ---------------------------------------------------------------

    @api.get("/health")
    async def health(self):
        return Response(status_code=200 if await self._all_ready() else 503)

    @api.get("/v1/cluster/status")
    async def cluster_status(self):
        out = self.state.status()
        out["ready"] = await self._all_ready()
        return out

    @api.get("/v1/models")
    async def list_models(self):
        return {"object": "list", "data": [_card(m) for m in self.config.models]}

    @api.get("/v1/models/{model_id:path}")
    async def get_model(self, model_id: str):
        if model_id not in self.config.models:
            raise model_not_found(model_id, self.config.models)
        return _card(model_id)

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._forward("/v1/completions", request)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._forward("/v1/chat/completions", request)

    async def _forward(self, path: str, request: Request):
        await self._require_ready()
        body = await read_json(request, self.config.max_body_bytes)
        length = prompt_length(body)
        self.state.ranges.observe(length)
        avoid, errors = None, []
        for _attempt in range(2):  # the first try and at most one retry elsewhere
            token = uuid.uuid4().hex
            gen = self.handle.remote(path, body, length=length, avoid=avoid, token=token)
            try:
                first = await gen.__anext__()
            except asyncio.CancelledError:  # the client went away before anything started
                gen.cancel()
                self.state.finished(token, None)
                raise
            except Exception as exc:  # noqa: BLE001 - the replica actor died or was unreachable
                first = {"kind": RETRY, "replica": None, "error": f"{type(exc).__name__}: {exc}"}
            if first.get("kind") != RETRY:
                break
            self.state.finished(token, None)
            errors.append(first["error"])
            avoid = first.get("replica") or avoid
        else:
            raise unavailable(f"no replica could take the request: {'; '.join(errors)}")
        rid = first["replica"]
        headers = {"X-BucketServe-Replica": rid, "X-BucketServe-Prompt-Length": str(length),
                   "X-BucketServe-Retried": "1" if errors else "0"}
        if first["status"] >= 400 or not body.get("stream"):
            try:
                data = b"".join([chunk async for chunk in gen])
            except asyncio.CancelledError:
                gen.cancel()
                self.state.finished(token, None)
                raise
            except Exception as exc:  # noqa: BLE001
                self.state.finished(token, None)
                raise unavailable(f"replica {rid} failed before answering: {type(exc).__name__}") from None
            self.state.finished(token, rid)
            return Response(data, status_code=first["status"], media_type=first["content_type"], headers=headers)
        self.state.started(token)  # a stream's headers come with its first token: its prefill is done
        return StreamingResponse(self._relay(gen, token, rid), status_code=first["status"], media_type=first["content_type"],
                                 headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _relay(self, gen, token: str, rid: str):
        done = False
        try:
            async for chunk in gen:
                yield chunk
            done = True
        except Exception as exc:  # noqa: BLE001 - the replica died mid-stream: one error event, then the end
            done = True
            yield sse_error(f"replica {rid} failed mid-stream: {type(exc).__name__}")
        finally:
            if not done:  # the client went away: stop the generation on the replica
                gen.cancel()
            self.state.finished(token, rid if done else None)


def _card(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "bucketserve"}
