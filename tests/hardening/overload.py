"""Open-loop overload driver (asyncio + aiohttp on HTTP /generate, one POST per request, so every
request has exactly one answer or a client-side failure, counted per request)."""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

MAX_TOKENS = 16
REQUEST_TIMEOUT_S = 120.0


@dataclass
class Tally:
    sent: int = 0
    outcomes: Counter = field(default_factory=Counter)  # (class, success | rejected | other_error | lost)
    errors: Counter = field(default_factory=Counter)  # unexpected messages
    latencies: list = field(default_factory=list)

    def add(self, cls: str, outcome: str, detail: str = "") -> None:
        self.outcomes[(cls, outcome)] += 1
        if outcome in ("other_error", "lost"):
            self.errors[detail[:160]] += 1

    def count(self, outcome: str, cls: str | None = None) -> int:
        return sum(n for (c, o), n in self.outcomes.items() if o == outcome and (cls is None or c == cls))


async def _one(session, url: str, i: int, tally: Tally) -> None:
    cls = "online" if i % 2 else "offline"
    body = {"text_input": f"request {i}: the bucket scheduler groups requests by length", "max_tokens": MAX_TOKENS,
            "ignore_eos": True, "request_class": cls}
    t0 = time.monotonic()
    try:
        async with session.post(url, data=json.dumps(body), headers={"Content-Type": "application/json"}) as resp:
            text = await resp.text()
    except Exception as exc:  # noqa: BLE001 - a request with no answer is what this test looks for
        tally.add(cls, "lost", f"{type(exc).__name__}: {exc}")
        return
    try:
        answer = json.loads(text)
    except ValueError:
        answer = {"error": text}
    if resp.status == 200 and "error" not in answer and answer.get("num_output_tokens") == MAX_TOKENS:
        tally.add(cls, "success")
        tally.latencies.append(time.monotonic() - t0)
    elif "queue full" in str(answer.get("error", "")):
        tally.add(cls, "rejected")
    else:
        tally.add(cls, "other_error", f"{resp.status} {text}")


async def _closed_loop(url: str, concurrency: int, seconds: float) -> float:
    tally = Tally()
    end = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        async def worker(w):
            i = w
            while time.monotonic() < end:
                await _one(session, url, i, tally)
                i += concurrency
        t0 = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.monotonic() - t0
    return tally.count("success") / elapsed


async def _open_loop(url: str, rate: float, seconds: float, sample, seed: int = 0) -> Tally:
    tally = Tally()
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    tasks = []
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.monotonic()
        next_at, next_sample, i = start, start, 0
        while next_at < start + seconds:
            now = time.monotonic()
            if now >= next_sample:
                await asyncio.get_running_loop().run_in_executor(None, sample)
                next_sample = now + 0.5
            if now < next_at:
                await asyncio.sleep(min(next_at, next_sample) - now)
                continue
            tasks.append(asyncio.create_task(_one(session, url, i, tally)))
            tally.sent += 1
            i += 1
            next_at += rng.expovariate(rate)  # Poisson arrivals, independent of the answers
        pending = set(tasks)
        while pending:
            _done, pending = await asyncio.wait(pending, timeout=0.5)
            await asyncio.get_running_loop().run_in_executor(None, sample)
    return tally


def measure_capacity(url: str, concurrency: int, seconds: float) -> float:
    return asyncio.run(_closed_loop(url, concurrency, seconds))


def open_loop(url: str, rate: float, seconds: float, sample) -> Tally:
    return asyncio.run(_open_loop(url, rate, seconds, sample))


def ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{http_url}/v2/health/ready", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


class GrpcReadiness:
    """Server and model readiness over gRPC. The overload test asks this way: GET
    /v2/health/ready on the HTTP port while it carries an HTTP overload makes Triton 2.51's HTTP
    front end lose generate answers the model has sent (docs/reliability.md, open issues)."""

    def __init__(self, url: str, model: str):
        import tritonclient.grpc as grpcclient

        self._client = grpcclient.InferenceServerClient(url)
        self._model = model

    def __call__(self) -> bool:
        try:
            return self._client.is_server_ready() and self._client.is_model_ready(self._model)
        except Exception:  # noqa: BLE001 - not answering is not ready
            return False

    def close(self) -> None:
        self._client.close()
