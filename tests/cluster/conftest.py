"""One real cluster for the module: a local Ray cluster, Serve, 2 Triton replicas of the tiny
model behind the OpenAI ingress on a free port; always taken down."""

from __future__ import annotations

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
    handle = start_local(settings, port=free_port(), num_cpus=2)
    try:
        yield handle
    finally:
        handle.stop()
