"""Cluster settings and the `bucketserve cluster` command line (no Ray started)."""

import pytest

from bucket_scheduler.cluster.app import ClusterSettings
from bucket_scheduler.serving import cli


def test_settings_refuse_an_unknown_router_and_no_replicas():
    with pytest.raises(ValueError, match="router"):
        ClusterSettings(router="random")
    with pytest.raises(ValueError, match="replicas"):
        ClusterSettings(replicas=0)
    with pytest.raises(ValueError, match="split"):
        ClusterSettings(split="even")


def test_every_model_gets_the_thread_count_and_params_win():
    s = ClusterSettings(models="bucketserve,bucketserve_tiny", threads=2, params={"bucketserve": {"policy": "static", "threads": "3"}})
    o = s.overrides()
    assert o["bucketserve_tiny"]["threads"] == "2" and o["bucketserve"] == {"threads": "3", "max_num_seqs": "32", "policy": "static"}


def test_cluster_command_starts_the_local_cluster_with_its_flags(monkeypatch):
    seen = {}

    def fake_run_local(settings, host, port, log):
        seen.update(settings=settings, host=host, port=port)
        return 0

    monkeypatch.setattr("bucket_scheduler.cluster.app.run_local", fake_run_local)
    assert cli.main(["cluster", "--replicas", "3", "--router", "pow2", "--models", "bucketserve_tiny", "--policy", "bucket"]) == 0
    s = seen["settings"]
    assert (s.replicas, s.router, s.models, seen["host"], seen["port"]) == (3, "pow2", ["bucketserve_tiny"], "127.0.0.1", 9000)
    assert s.overrides()["bucketserve_tiny"]["policy"] == "bucket"
    assert (s.split, s.imbalance) == ("padding", 1.0)
    assert cli.main(["cluster", "--ranges", "tokens", "--imbalance", "2.5"]) == 0
    assert (seen["settings"].split, seen["settings"].imbalance) == ("tokens", 2.5)
