"""One Serve replica = one tritonserver (+ its OpenAI front end) started through the launcher.

The replica forwards OpenAI request bodies, unchanged, to its own front end over loopback HTTP
and streams the bytes back: the OpenAI layer is the one `bucketserve serve` runs, not a second
one. Its first item says which replica answered and with what status; a request it could not
start (its server is gone, or the front end refused the connection) comes back as a `retry`
item instead, so the ingress may send it once to another replica: no token has left yet.

Ray Serve calls check_health() every few seconds: a dead tritonserver or front end fails it,
and Serve replaces the replica (the new one starts its own server on new free ports).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import AsyncIterator

from bucket_scheduler.serving.launcher import ServerHandle, ServerOptions, start_server

log = logging.getLogger("ray.serve")

# Item kinds of generate()'s first item.
START, RETRY = "start", "retry"


@dataclass
class ReplicaConfig:
    models: list[str] = field(default_factory=lambda: ["bucketserve"])
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    model_repository: str | None = None
    exit_timeout_s: int = 10
    ready_timeout_s: float = 900.0
    request_timeout_s: float = 3600.0


def replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside Serve (unit use)
        return f"pid{os.getpid()}"


class TritonReplica:
    """The Serve deployment class (app.py wraps it with serve.deployment)."""

    def __init__(self, config: dict | ReplicaConfig):
        self.config = config if isinstance(config, ReplicaConfig) else ReplicaConfig(**config)
        self.id = replica_id()
        self.served = 0
        self.in_flight = 0
        self._session = None
        self._lock = threading.Lock()
        self.server: ServerHandle = start_server(ServerOptions(
            models=self.config.models, overrides=self.config.overrides, model_repository=self.config.model_repository,
            http_port=0, grpc_port=0, metrics_port=0, openai_port=0, exit_timeout_s=self.config.exit_timeout_s,
            ready_timeout_s=self.config.ready_timeout_s), log=lambda msg: log.info("%s %s", self.id, msg))
        log.info("replica %s: tritonserver pid %s, OpenAI API %s", self.id, self.server.pid, self.server.openai_url)

    # --- Serve hooks ----------------------------------------------------------

    def check_health(self) -> None:
        if not self.server.alive():
            raise RuntimeError(f"tritonserver (pid {self.server.pid}) exited with code {self.server.process.returncode}")
        if self.server.frontend is None or not self.server.frontend.alive():
            raise RuntimeError("the OpenAI front end exited")

    def record_routing_stats(self) -> dict:
        return {"served": self.served, "in_flight": self.in_flight, "alive": self.server.alive()}

    def __del__(self):
        server = getattr(self, "server", None)
        if server is not None:
            server.stop(timeout_s=self.config.exit_timeout_s + 5)

    # --- requests -------------------------------------------------------------

    def info(self) -> dict:
        return {"id": self.id, "openai_url": self.server.openai_url, "grpc_url": self.server.grpc_url, "pid": self.server.pid,
                "served": self.served}

    def kill_server(self) -> int:
        """Kill this replica's tritonserver outright (SIGKILL to its process group): the fault the
        cluster must survive. Returns the killed pid."""
        pid = self.server.pid
        self.server.kill_group()
        return pid

    async def _http(self):
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.request_timeout_s),
                                                  trust_env=False)
        return self._session

    async def generate(self, path: str, body: dict, length: int = 0, avoid: str | None = None,
                       token: str | None = None) -> AsyncIterator:
        """First item: {"kind": "start", "replica", "status", "content_type"} then the body's bytes;
        or one {"kind": "retry", "replica", "error"} when nothing could start here.
        (length, avoid and token are for the router, which reads them from the request.)"""
        import aiohttp

        self.in_flight += 1
        sent = False
        try:
            if not self.server.alive():
                yield {"kind": RETRY, "replica": self.id, "error": f"replica {self.id}: its tritonserver is not running"}
                return
            session = await self._http()
            try:
                async with session.post(f"{self.server.openai_url}{path}", json=body) as resp:
                    if resp.status >= 500 and not self.server.alive():
                        yield {"kind": RETRY, "replica": self.id,
                               "error": f"replica {self.id}: its tritonserver exited ({resp.status} from its front end)"}
                        return
                    first = {"kind": START, "replica": self.id, "status": resp.status,
                             "content_type": resp.headers.get("Content-Type", "application/json")}
                    if resp.status >= 400 or not body.get("stream"):
                        # Whole answers go back as one item: nothing reaches the client before it is complete.
                        data = await resp.read()
                        yield first
                        sent = True
                        yield data
                        return
                    yield first
                    sent = True
                    async for chunk in resp.content.iter_any():
                        yield chunk
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                if not sent:
                    yield {"kind": RETRY, "replica": self.id, "error": f"replica {self.id}: {type(exc).__name__}: {exc}"}
                else:  # the front end vanished mid-stream: end the stream with one clear error
                    yield sse_error(f"replica {self.id} lost its server mid-stream: {type(exc).__name__}")
        finally:
            self.in_flight -= 1
            if sent:
                self.served += 1


def sse_error(message: str, status: int = 503) -> bytes:
    import json

    err = {"error": {"message": message, "type": "service_unavailable" if status == 503 else "server_error", "param": None,
                     "code": "replica_failed"}}
    return f"data: {json.dumps(err)}\n\ndata: [DONE]\n\n".encode()
