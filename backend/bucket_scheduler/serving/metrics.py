"""BucketServe's Prometheus metrics, published through Triton's custom-metrics API.

Every family is prefixed `bucketserve_` and labelled with `model` and `version`.

Thread rule (see docs): a pb_utils.Metric must never be updated from two threads at once (the
python backend rewrites its shared-memory block without a lock and the server can crash). So
only the Sender thread calls the methods below; execute() and the engine thread never do.
The families are kept on `self`: a family that is garbage-collected deletes its metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Seconds. TTFT / e2e span a tiny CPU model (~ms) up to a loaded SmolLM2 run (tens of s).
LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0]
TPOT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5]
OUTCOMES = ("success", "invalid", "rejected", "cancelled", "error")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()  # besides model and version
    buckets: tuple[float, ...] | None = None


SPECS = [
    MetricSpec("bucketserve_requests_total", "counter", "Requests answered, by outcome (success, invalid, rejected, cancelled, error)", ("outcome",)),
    MetricSpec("bucketserve_prompt_tokens_total", "counter", "Prompt tokens of requests answered"),
    MetricSpec("bucketserve_generation_tokens_total", "counter", "Tokens generated for requests answered (including cancelled ones)"),
    MetricSpec("bucketserve_slo_met_total", "counter", "Online requests that met their SLO target, by target (ttft, tpot)", ("slo",)),
    MetricSpec("bucketserve_slo_missed_total", "counter", "Online requests that missed their SLO target, by target (ttft, tpot)", ("slo",)),
    MetricSpec("bucketserve_time_to_first_token_seconds", "histogram", "Arrival to first token", buckets=tuple(LATENCY_BUCKETS)),
    MetricSpec("bucketserve_time_per_output_token_seconds", "histogram", "Mean time per output token after the first", buckets=tuple(TPOT_BUCKETS)),
    MetricSpec("bucketserve_e2e_request_latency_seconds", "histogram", "Arrival to final response", buckets=tuple(LATENCY_BUCKETS)),
    MetricSpec("bucketserve_queue_depth", "gauge", "Waiting requests per bucket (label bucket=\"[low,up)\" in prompt tokens)", ("bucket",)),
    MetricSpec("bucketserve_queue_requests", "gauge", "Waiting requests in the engine, all buckets"),
    MetricSpec("bucketserve_buckets", "gauge", "Number of buckets the scheduler keeps now"),
    MetricSpec("bucketserve_batch_size", "gauge", "Sequences in the running batch"),
    MetricSpec("bucketserve_padding_efficiency", "gauge", "Prefill padding efficiency since start: useful / computed token slots"),
    MetricSpec("bucketserve_kv_bytes_in_use", "gauge", "Bytes the KV cache holds now"),
    MetricSpec("bucketserve_kv_budget_bytes", "gauge", "Safe KV budget from the live free-memory probe"),
    MetricSpec("bucketserve_inflight_requests", "gauge", "Requests accepted and not yet given their final response"),
    MetricSpec("bucketserve_compiled_shapes", "gauge", "Decode step shapes compiled (compile setting; 0 when eager)"),
    MetricSpec("bucketserve_compile_seconds_total", "counter", "Wall seconds spent compiling decode step shapes"),
]


def _get(obj: Any, *names: str, default: Any = None) -> Any:
    """Read the first present field of a stats snapshot (object or dict)."""
    for name in names:
        value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        if value is not None:
            return value
    return default


class Metrics:
    def __init__(self, pb_utils: Any, model: str, version: str):
        self._pb = pb_utils
        self._base = {"model": model, "version": str(version)}
        kinds = {
            "counter": pb_utils.MetricFamily.COUNTER,
            "gauge": pb_utils.MetricFamily.GAUGE,
            "histogram": pb_utils.MetricFamily.HISTOGRAM,
        }
        self._families = {s.name: pb_utils.MetricFamily(name=s.name, description=s.help, kind=kinds[s.kind]) for s in SPECS}
        self._specs = {s.name: s for s in SPECS}
        self._metrics: dict[tuple, Any] = {}
        self._bucket_labels: set[str] = set()
        self._compile_s = 0.0  # compile seconds already counted
        # Create the label sets users look for up front, so they read 0 rather than absent.
        for outcome in OUTCOMES:
            self._metric("bucketserve_requests_total", outcome=outcome)
        for spec in SPECS:
            if not spec.labels:
                self._metric(spec.name)
        for slo in ("ttft", "tpot"):
            self._metric("bucketserve_slo_met_total", slo=slo)
            self._metric("bucketserve_slo_missed_total", slo=slo)

    def _metric(self, name: str, **labels: str) -> Any:
        key = (name, tuple(sorted(labels.items())))
        metric = self._metrics.get(key)
        if metric is None:
            spec = self._specs[name]
            all_labels = {**self._base, **labels}
            if spec.kind == "histogram":
                metric = self._families[name].Metric(labels=all_labels, buckets=list(spec.buckets))
            else:
                metric = self._families[name].Metric(labels=all_labels)
            self._metrics[key] = metric
        return metric

    # ---- per request (sender thread) ----

    def request_done(self, outcome: str, prompt_tokens: int = 0, output_tokens: int = 0, timing: Any = None,
                     slo_ttft_ms: float | None = None, slo_tpot_ms: float | None = None) -> None:
        self._metric("bucketserve_requests_total", outcome=outcome).increment(1)
        if prompt_tokens:
            self._metric("bucketserve_prompt_tokens_total").increment(int(prompt_tokens))
        if output_tokens:
            self._metric("bucketserve_generation_tokens_total").increment(int(output_tokens))
        if outcome != "success" or timing is None:
            return
        ttft, tpot, e2e = _get(timing, "ttft_s"), _get(timing, "tpot_s"), _get(timing, "e2e_s")
        if ttft is not None:
            self._metric("bucketserve_time_to_first_token_seconds").observe(float(ttft))
        if tpot is not None:
            self._metric("bucketserve_time_per_output_token_seconds").observe(float(tpot))
        if e2e is not None:
            self._metric("bucketserve_e2e_request_latency_seconds").observe(float(e2e))
        for slo, target_ms, value in (("ttft", slo_ttft_ms, ttft), ("tpot", slo_tpot_ms, tpot)):
            if target_ms is None or value is None:
                continue
            met = value * 1000.0 <= target_ms
            self._metric("bucketserve_slo_met_total" if met else "bucketserve_slo_missed_total", slo=slo).increment(1)

    def set_inflight(self, n: int) -> None:
        self._metric("bucketserve_inflight_requests").set(n)

    # ---- engine snapshot (sender thread, a few times a second) ----

    def update_engine(self, stats: Any) -> None:
        """From the engine's stats snapshot (runtime.engine.EngineStats): the queue per bucket
        of the last scheduling step, the running batch, KV bytes and budget."""
        if stats is None:
            return
        step = _get(stats, "last_step")
        waiting = int(_get(stats, "num_waiting", default=0))
        buckets = (_get(step, "buckets", default=[]) if step is not None else []) or []
        seen = set()
        for b in buckets:
            label = f"[{_get(b, 'low')},{_get(b, 'up')})"
            seen.add(label)
            # The step snapshot can be older than the queue: nothing waiting means every bucket is empty.
            self._metric("bucketserve_queue_depth", bucket=label).set(int(_get(b, "depth", default=0)) if waiting else 0)
        for label in self._bucket_labels - seen:  # buckets merged away: their queue is empty
            self._metric("bucketserve_queue_depth", bucket=label).set(0)
        self._bucket_labels |= seen
        self._metric("bucketserve_buckets").set(len(buckets))
        self._metric("bucketserve_queue_requests").set(waiting)
        self._metric("bucketserve_batch_size").set(int(_get(stats, "num_running", default=0)))
        self._metric("bucketserve_padding_efficiency").set(float(_get(stats, "prefill_padding_efficiency", default=1.0)))
        self._metric("bucketserve_kv_bytes_in_use").set(int(_get(stats, "kv_bytes", default=0)))
        self._metric("bucketserve_compiled_shapes").set(int(_get(stats, "compiled_shapes", default=0)))
        compile_s = float(_get(stats, "compile_seconds", default=0.0))
        if compile_s > self._compile_s:
            self._metric("bucketserve_compile_seconds_total").increment(compile_s - self._compile_s)
            self._compile_s = compile_s
        if step is not None:
            self._metric("bucketserve_kv_budget_bytes").set(int(_get(step, "budget_bytes", default=0)))
