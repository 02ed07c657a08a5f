"""Client-side tools for the hardening tests: raw request senders that count every response
(gRPC streaming and HTTP generate), metric gauges, and the server's threads and file descriptors."""

from __future__ import annotations

import http.client
import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from integration.helpers import scrape, value, wait_until  # noqa: F401  (re-exported)

GAUGES = ("bucketserve_inflight_requests", "bucketserve_queue_requests", "bucketserve_batch_size",
          "bucketserve_kv_bytes_in_use")


@dataclass
class ServerUnderTest:
    handle: Any  # launcher.ServerHandle
    model: str
    probe_file: Path
    settings: dict[str, Any]

    def set_free_bytes(self, n: int) -> None:
        tmp = self.probe_file.with_suffix(".tmp")
        tmp.write_text(str(int(n)))
        os.replace(tmp, self.probe_file)  # the engine never reads a half-written number

    def metrics(self) -> dict:
        return scrape(self.handle.metrics_url)

    def gauge(self, name: str, samples: dict | None = None) -> float:
        return value(samples or self.metrics(), name, model=self.model)

    def counter(self, outcome: str, samples: dict | None = None) -> float:
        return value(samples or self.metrics(), "bucketserve_requests_total", model=self.model, outcome=outcome)

    def outcomes(self) -> dict[str, float]:
        s = self.metrics()
        return {o: self.counter(o, s) for o in ("success", "invalid", "rejected", "cancelled", "error")}

    def settled_outcomes(self, timeout_s: float = 60.0) -> dict[str, float]:
        """Outcome counters once nothing is in flight and they have stopped moving (the sender
        counts a request just after it sends the final, so a client can be a moment ahead)."""
        assert wait_until(self.idle, timeout_s), self.metrics()
        last = self.outcomes()
        while True:
            time.sleep(0.5)
            now = self.outcomes()
            if now == last:
                return now
            last = now

    def idle(self) -> bool:
        s = self.metrics()
        return all(self.gauge(g, s) == 0 for g in GAUGES)

    def resources(self) -> dict[str, int]:
        """Threads and open fds of tritonserver and of its stub process(es)."""
        out = {"server_threads": 0, "server_fds": 0, "stub_threads": 0, "stub_fds": 0}
        proc = psutil.Process(self.handle.pid)
        out["server_threads"], out["server_fds"] = proc.num_threads(), proc.num_fds()
        for child in proc.children(recursive=True):
            try:
                out["stub_threads"] += child.num_threads()
                out["stub_fds"] += child.num_fds()
            except psutil.NoSuchProcess:
                pass
        return out

    def grpc_url(self) -> str:
        return self.handle.grpc_url


# tritonserver's gRPC core may start a thread the first time a storm needs it and keep it (seen:
# 63 -> 64 once after 1,460 cancels, then 64 through a 99,490-request overload): a pool, not a
# leak. A leak grows with the work; this allowance does not. Our stub gets none.
POOL_ALLOWANCE = {"server_threads": 2, "server_fds": 2, "stub_threads": 0, "stub_fds": 0}


def returned(reading: dict[str, int], baseline: dict[str, int]) -> bool:
    return all(reading[k] <= baseline[k] + POOL_ALLOWANCE[k] for k in baseline)


def back_to(server: ServerUnderTest, baseline: dict[str, int], timeout_s: float = 60.0) -> dict[str, int]:
    """Wait until threads and fds are back at their idle counts (within POOL_ALLOWANCE); return
    the last reading."""
    last = {}

    def ok():
        last.update(server.resources())
        return all(last[k] <= baseline[k] for k in baseline)

    if not wait_until(ok, timeout_s / 2, 0.5):
        wait_until(lambda: returned(server.resources(), baseline), timeout_s / 2, 0.5)
        last.update(server.resources())
    return dict(last)


# ---- HTTP generate -------------------------------------------------------------------------

@dataclass
class HttpAnswer:
    status: int | None
    body: dict | None
    raw: bytes
    error: str | None  # the server's message, or why there was no answer


def http_post(server: ServerUnderTest, body: bytes | dict, endpoint: str = "generate", timeout_s: float = 60.0) -> HttpAnswer:
    """One POST to /v2/models/M/<endpoint>; the whole answer (SSE events joined for generate_stream)."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    host, port = "127.0.0.1", server.handle.http_port
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("POST", f"/v2/models/{server.model}/{endpoint}", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return HttpAnswer(None, None, b"", f"no answer: {exc!r}")
    finally:
        conn.close()
    text = raw.decode("utf-8", "replace").strip()
    events = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")] if endpoint == "generate_stream" else []
    events = events or [text]  # an error before streaming started comes as a plain JSON body
    parsed = None
    error = None
    for ev in events:
        try:
            parsed = json.loads(ev)
        except ValueError:
            parsed = {"error": ev}
        if isinstance(parsed, dict) and "error" in parsed:
            error = parsed["error"]
    return HttpAnswer(resp.status, parsed, raw, error)


# ---- gRPC streaming with raw tensors ---------------------------------------------------------

NP = {"INT32": np.int32, "BOOL": np.bool_, "FP32": np.float32, "FP64": np.float64, "UINT64": np.uint64,
      "INT64": np.int64, "BYTES": np.object_}


@dataclass
class StreamAnswer:
    error: str | None = None
    texts: list[str] = field(default_factory=list)
    final: bool = False
    responses: int = 0


class GrpcStream:
    """One gRPC bidirectional stream; requests go one at a time and every response is counted.

    tritonclient gives a stream error no request id, so requests are sent one after another:
    each must get its final before the next is sent, and at close() the total number of
    responses must equal what the requests accounted for (a second final would show up there)."""

    def __init__(self, url: str, model: str):
        import tritonclient.grpc as grpcclient

        self._g = grpcclient
        self.model = model
        self.client = grpcclient.InferenceServerClient(url)
        self._q: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self._q.put((result, error)))
        self.responses = 0

    def _inputs(self, tensors: list[tuple[str, Any, str]]):
        out = []
        for name, values, dtype in tensors:
            arr = values if isinstance(values, np.ndarray) else np.array(values, dtype=NP[dtype])
            inp = self._g.InferInput(name, list(arr.shape), dtype)
            inp.set_data_from_numpy(arr)
            out.append(inp)
        return out

    def send(self, tensors: list[tuple[str, Any, str]], timeout_s: float = 60.0, parameters: dict | None = None) -> StreamAnswer:
        """Send one request; return once its final arrived (an error is always final)."""
        ans = StreamAnswer()
        self.client.async_stream_infer(self.model, self._inputs(tensors), enable_empty_final_response=True,
                                       parameters=parameters)
        deadline = time.monotonic() + timeout_s
        while not ans.final:
            result, error = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
            self.responses += 1
            ans.responses += 1
            if error is not None:
                ans.error, ans.final = (error.message() if hasattr(error, "message") else str(error)), True
                continue
            out = result.as_numpy("text_output")
            if out is not None and out.size:
                ans.texts.append(b"".join(bytes(x) for x in out.reshape(-1)).decode("utf-8", "replace"))
            flag = result.get_response().parameters.get("triton_final_response")
            ans.final = bool(flag is not None and flag.bool_param)
        return ans

    def extra_responses(self, wait_s: float = 1.0) -> int:
        """Responses that arrived after every request had its final (should be none)."""
        time.sleep(wait_s)
        n = 0
        while not self._q.empty():
            self._q.get_nowait()
            n += 1
        self.responses += n
        return n

    def close(self) -> None:
        try:
            self.client.stop_stream()
        finally:
            self.client.close()


def prompt_of(n_words: int, seed: int = 0) -> str:
    words = ["bucket", "batch", "token", "queue", "memory", "server", "model", "stream", "cancel", "length"]
    return " ".join(words[(seed + i * 7) % len(words)] for i in range(n_words))


def run_threads(fn, n: int) -> list:
    results = [None] * n

    def wrap(i):
        results[i] = fn(i)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def planned_bytes(worst_tokens: list[int]) -> int:
    """What the engine's MemoryPlanner plans for these sequences on the hardening server: the
    tiny test model (runtime.models.TinySpec: 2 layers, 2 KV heads of 16, hidden 64,
    intermediate 128, vocab 400) in float32, padded accounting."""
    from bucket_scheduler.core.memory import BatchShape, FixedProbe, KVSpec, MemoryPlanner
    from bucket_scheduler.runtime.kv_cache import plan_spec

    spec = plan_spec(KVSpec(num_layers=2, num_kv_heads=2, head_dim=16, dtype_bytes=4, hidden_size=64,
                            intermediate_size=128, vocab_size=400))
    return MemoryPlanner(spec, FixedProbe(0)).planned_bytes(BatchShape.of(worst_tokens))
