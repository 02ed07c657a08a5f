"""The compiled-step figures of the engine's stats reach their Prometheus families: the shapes
as a gauge, the compile seconds as a counter that only grows by what is new."""

from __future__ import annotations

from bucket_scheduler.serving.metrics import Metrics

from . import fake_pb_utils as pb


def value(metrics, name):
    return metrics._metrics[(name, ())].value


def test_compile_stats_reach_their_metrics():
    metrics = Metrics(pb, "m", "1")
    assert value(metrics, "bucketserve_compiled_shapes") == 0
    assert value(metrics, "bucketserve_compile_seconds_total") == 0
    metrics.update_engine({"num_waiting": 0, "compiled_shapes": 2, "compile_seconds": 3.5})
    metrics.update_engine({"num_waiting": 0, "compiled_shapes": 6, "compile_seconds": 9.0})
    metrics.update_engine({"num_waiting": 0, "compiled_shapes": 6, "compile_seconds": 9.0})
    assert value(metrics, "bucketserve_compiled_shapes") == 6
    assert value(metrics, "bucketserve_compile_seconds_total") == 9.0
