"""One real cluster for the module: a local Ray cluster, Serve, 2 Triton replicas of the tiny
model behind the OpenAI ingress on a free port; always taken down.

While it starts (the replicas' tritonservers take a while), the fixture asks the ingress for
/health and a completion every half second and keeps the answers (`starting_answers`): what a
client sees before the replicas are ready."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("ray.serve", reason="the cluster extra (ray[serve]) is not installed")

from bucket_scheduler.serving.launcher import free_port  # noqa: E402

TINY = "bucketserve_tiny"
MAX_LEN = 512  # estimated-token span of the ranges: even ranges cut at 256 until MIN_OBS lengths are seen
MIN_OBS = 8


@pytest.fixture(scope="module")
def cluster():
    from bucket_scheduler.cluster.app import ClusterSettings, start_local

    settings = ClusterSettings(replicas=2, router="bucket", models=[TINY], threads=1, max_len=MAX_LEN, min_observations=MIN_OBS,
                               imbalance=50,  # ranges only: the overload hand-over is the slow test's
                               params={TINY: {"default_max_tokens": "8"}}, exit_timeout_s=5, health_check_period_s=1.0)
    port = free_port()
    answers: list[dict] = []
    done = threading.Event()
    # The watcher gets the thread, not start_local: Ray ties the processes it starts (its GCS)
    # to the thread that started them, and they die with it.
    watcher = threading.Thread(target=_watch_start, args=(f"http://127.0.0.1:{port}", done, answers), daemon=True)
    watcher.start()
    try:
        handle = start_local(settings, port=port, num_cpus=2)
    finally:
        done.set()
        watcher.join(150)
    handle.starting_answers = answers
    try:
        yield handle
    finally:
        handle.stop()


def _ask(url: str, path: str, body: dict | None = None) -> tuple[int, dict, dict | None]:
    """(status, headers (lower-case names), JSON body or None); status 0 when nothing listens yet."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{url}{path}", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, headers, raw = r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, {}, None
    try:
        return status, headers, json.loads(raw) if raw else None
    except ValueError:
        return status, headers, None


def _watch_start(url: str, done: threading.Event, answers: list[dict]) -> None:
    """Until the cluster is started: /health and a small completion, every half second."""
    while not done.is_set():
        for path, body in (("/health", None), ("/v1/completions", {"model": TINY, "prompt": "early", "max_tokens": 2})):
            status, headers, data = _ask(url, path, body)
            answers.append({"t": time.monotonic(), "path": path, "status": status, "headers": headers, "body": data})
        done.wait(0.5)
