"""The OpenAI-compatible API under a full queue: 503 with Retry-After and OpenAI's error shape,
the engine's own "queue full" message, and the API answers again once the queue drains."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from .test_admission import hold_queue, queued


def _post(url: str, body: dict):
    req = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def test_full_queue_gets_503_with_retry_after(server):
    url = server.handle.openai_url
    offline_cap = int(-(-server.settings["max_queue_requests"] * server.settings["offline_queue_fraction"] // 1))
    client, runner = hold_queue(server)
    waiting = []
    try:
        waiting = [client.start(f"offline {i}", max_tokens=4, ignore_eos=True, request_class="offline") for i in range(offline_cap)]
        assert queued(server, offline_cap)
        for stream in (False, True):
            status, headers, body = _post(url, {"model": server.model, "prompt": "one too many", "max_tokens": 4,
                                                "request_class": "offline", "stream": stream})
            assert status == 503 and int(headers.get("Retry-After", 0)) >= 1, (status, dict(headers), body)
            assert body["error"]["code"] == "service_unavailable" and "queue full" in body["error"]["message"]
    finally:
        server.set_free_bytes(1 << 30)
    assert all(w.result(120).ok for w in waiting)
    runner.cancel()
    status, _, body = _post(url, {"model": server.model, "prompt": "room again", "max_tokens": 3, "ignore_eos": True})
    assert status == 200 and body["usage"]["completion_tokens"] == 3
