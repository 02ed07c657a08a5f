"""Talk to a BucketServe model on a Triton server: gRPC streaming, HTTP generate / generate_stream.

    from bucketserve_client import GrpcClient, HttpClient
    result = GrpcClient("127.0.0.1:8001").generate("Hello", stream=True, max_tokens=32,
                                                   on_delta=lambda t: print(t, end=""))
    print(result.text, result.finish_reason, result.ttft_s, result.tpot_s)

Timing is measured here, client-side: TTFT is send -> first text received (for a
non-streaming request that is the whole answer), TPOT is (last - first text) / (tokens - 1).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

DEFAULT_MODEL = "bucketserve"
DEFAULT_GRPC_URL = "127.0.0.1:8001"
DEFAULT_HTTP_URL = "http://127.0.0.1:8000"

# Optional request fields and their Triton dtypes (the model's config.pbtxt inputs).
FIELD_DTYPES = {
    "max_tokens": "INT32",
    "stream": "BOOL",
    "temperature": "FP32",
    "top_k": "INT32",
    "top_p": "FP32",
    "seed": "UINT64",
    "stop": "BYTES",
    "ignore_eos": "BOOL",
    "min_tokens": "INT32",
    "exclude_input_in_output": "BOOL",
    "request_class": "BYTES",
    "priority": "INT32",
    "slo_ttft_ms": "FP32",
    "slo_tpot_ms": "FP32",
    "apply_chat_template": "BOOL",
}
_NP = {"INT32": np.int32, "BOOL": np.bool_, "FP32": np.float32, "UINT64": np.uint64, "BYTES": np.object_}


@dataclass
class GenerationResult:
    text: str = ""
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None
    chunks: int = 0  # responses that carried text
    status: str = "ok"  # ok | error | cancelled
    error: str | None = None  # the server's message
    error_code: str | None = None  # e.g. StatusCode.INVALID_ARGUMENT / HTTP 400

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class _Timer:
    start: float = field(default_factory=time.perf_counter)
    first: float | None = None
    last: float | None = None

    def text(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now

    def finish(self, result: GenerationResult) -> GenerationResult:
        end = time.perf_counter()
        result.e2e_s = end - self.start
        if self.first is not None:
            result.ttft_s = self.first - self.start
            n = result.num_output_tokens or 0
            if n > 1 and self.last is not None and result.chunks > 1:
                result.tpot_s = (self.last - self.first) / (n - 1)
        return result


def request_fields(stream: bool, max_tokens: int | None = None, request_class: str | None = None, **options: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"stream": stream}
    if max_tokens is not None:
        fields["max_tokens"] = max_tokens
    if request_class is not None:
        fields["request_class"] = request_class
    for key, value in options.items():
        if key not in FIELD_DTYPES:
            raise TypeError(f"unknown option {key!r}; known: {sorted(FIELD_DTYPES)}")
        if value is not None:
            fields[key] = value
    return fields


def _scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


class GrpcGeneration:
    """One request on its own gRPC stream. result() waits for the final; cancel() ends it early."""

    def __init__(self, url: str, model: str, prompt: str, fields: dict[str, Any], on_delta: Callable[[str], None] | None):
        import tritonclient.grpc as grpcclient

        self._on_delta = on_delta
        self._done = threading.Event()
        self._parts: list[str] = []
        self._result = GenerationResult()
        self._cancelled = False
        self._client = grpcclient.InferenceServerClient(url)
        inputs = grpc_inputs(grpcclient, prompt, fields)
        self._timer = _Timer()
        self._client.start_stream(callback=self._callback)
        try:
            self._client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        except Exception as exc:  # noqa: BLE001 - e.g. no server: the stream broke before the send
            if not self._done.is_set():  # the callback may already hold the detail
                self._result.status, self._result.error = "error", str(exc)
                self._done.set()

    def _callback(self, result, error) -> None:
        if self._done.is_set():
            return
        r = self._result
        if error is not None:
            if self._cancelled:
                r.status = "cancelled"
            else:
                status = error.status() if hasattr(error, "status") else None
                r.status = "cancelled" if status and "CANCELLED" in str(status) else "error"
                r.error_code = str(status) if status else None
            r.error = error.message() if hasattr(error, "message") else str(error)
            self._done.set()
            return
        response = result.get_response()
        text_out = result.as_numpy("text_output")
        if text_out is not None and text_out.size:
            text = b"".join(bytes(x) for x in text_out.reshape(-1)).decode("utf-8", errors="replace")
            if text:
                self._timer.text()
                r.chunks += 1
                self._parts.append(text)
                if self._on_delta:
                    self._on_delta(text)
        for name in ("finish_reason", "num_input_tokens", "num_output_tokens"):
            value = result.as_numpy(name)
            if value is not None and value.size:
                v = _scalar(value.reshape(-1)[0])
                setattr(r, name, v.decode() if isinstance(v, bytes) else int(v))
        final = response.parameters.get("triton_final_response")
        if final is not None and final.bool_param:
            self._done.set()

    def cancel(self) -> None:
        """Cancel on the server (stream closed with cancel_requests=True)."""
        if self._done.is_set():
            return
        self._cancelled = True
        self._client.stop_stream(cancel_requests=True)
        self._result.status = "cancelled"
        self._done.set()

    def result(self, timeout_s: float | None = None) -> GenerationResult:
        if not self._done.wait(timeout_s):
            self.cancel()
            self._result.status, self._result.error = "error", f"no final response within {timeout_s}s"
        self.close()
        self._result.text = "".join(self._parts)
        return self._timer.finish(self._result)

    def close(self) -> None:
        try:
            self._client.stop_stream()
        finally:
            self._client.close()


def grpc_inputs(grpcclient, prompt: str, fields: dict[str, Any]) -> list:
    """The prompt and each field as the model's input tensors (tritonclient.grpc or .grpc.aio)."""
    inputs = [_grpc_input(grpcclient, "text_input", [prompt.encode("utf-8")], "BYTES")]
    for name, value in fields.items():
        values = [s.encode("utf-8") for s in value] if name == "stop" else [value.encode("utf-8") if isinstance(value, str) else value]
        inputs.append(_grpc_input(grpcclient, name, values, FIELD_DTYPES[name]))
    return inputs


def _grpc_input(grpcclient, name: str, values: list, dtype: str):
    arr = np.array(values, dtype=_NP[dtype])
    inp = grpcclient.InferInput(name, list(arr.shape), dtype)
    inp.set_data_from_numpy(arr)
    return inp


class GrpcClient:
    """gRPC streaming client. Each request gets its own stream (safe to call from many threads)."""

    def __init__(self, url: str = DEFAULT_GRPC_URL, model: str = DEFAULT_MODEL):
        self.url, self.model = url, model

    def start(self, prompt: str, stream: bool = True, max_tokens: int | None = None, request_class: str | None = None,
              on_delta: Callable[[str], None] | None = None, **options: Any) -> GrpcGeneration:
        return GrpcGeneration(self.url, self.model, prompt, request_fields(stream, max_tokens, request_class, **options), on_delta)

    def generate(self, prompt: str, stream: bool = False, max_tokens: int | None = None, request_class: str | None = None,
                 on_delta: Callable[[str], None] | None = None, timeout_s: float | None = 600.0, **options: Any) -> GenerationResult:
        return self.start(prompt, stream, max_tokens, request_class, on_delta, **options).result(timeout_s)


class HttpClient:
    """HTTP client for Triton's generate extension (POST /v2/models/M/generate[_stream])."""

    def __init__(self, url: str = DEFAULT_HTTP_URL, model: str = DEFAULT_MODEL, timeout_s: float = 600.0):
        parsed = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 8000
        self.model, self.timeout_s = model, timeout_s

    def _post(self, path: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        return conn, conn.getresponse()

    def generate(self, prompt: str, stream: bool = False, max_tokens: int | None = None, request_class: str | None = None,
                 on_delta: Callable[[str], None] | None = None, **options: Any) -> GenerationResult:
        """stream=False: /generate, one JSON answer. stream=True: /generate_stream, server-sent events."""
        body = {"text_input": prompt, **request_fields(stream, max_tokens, request_class, **options)}
        endpoint = "generate_stream" if stream else "generate"
        timer, result, parts = _Timer(), GenerationResult(), []
        conn, resp = self._post(f"/v2/models/{self.model}/{endpoint}", body)
        try:
            if stream and resp.status == 200:
                events = _sse_events(resp)
            else:  # one JSON body; an error on generate_stream also comes as one `data:` line
                body = resp.read().decode("utf-8", "replace").strip()
                events = [body[5:].strip() if body.startswith("data:") else body]
            for raw in events:
                try:
                    event = json.loads(raw)
                except ValueError:
                    event = {"error": raw}
                if resp.status != 200 or "error" in event:
                    result.status, result.error = "error", event.get("error", raw)
                    result.error_code = f"HTTP {resp.status}"
                    break
                text = event.get("text_output") or ""
                if text:
                    timer.text()
                    result.chunks += 1
                    parts.append(text)
                    if on_delta:
                        on_delta(text)
                for name in ("finish_reason", "num_input_tokens", "num_output_tokens"):
                    if event.get(name) is not None:
                        setattr(result, name, event[name])
        finally:
            conn.close()
        result.text = "".join(parts)
        return timer.finish(result)


def _sse_events(resp: http.client.HTTPResponse):
    """Yield the JSON text of each `data:` line; the stream ends when the server closes it."""
    for line in resp:
        line = line.strip()
        if line.startswith(b"data:"):
            yield line[5:].strip().decode("utf-8", "replace")


def make_client(protocol: str = "grpc", url: str | None = None, model: str = DEFAULT_MODEL):
    if protocol == "grpc":
        return GrpcClient(url or DEFAULT_GRPC_URL, model)
    if protocol == "http":
        return HttpClient(url or DEFAULT_HTTP_URL, model)
    raise ValueError(f"protocol must be grpc or http, not {protocol!r}")
