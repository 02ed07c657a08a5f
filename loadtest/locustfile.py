"""Locust load test for a BucketServe server: trace-driven requests over gRPC streaming or
HTTP generate_stream, reporting time to first token, time per output token and end-to-end
time as separate locust request types (TTFT, TPOT, E2E).

Locust users wait for each answer before sending the next (a closed loop): good for soak
and interactive use.  For capacity figures use the open-loop `bucketserve-bench`.

Headless, 8 gRPC users for 2 minutes, CSV files out/locust_*.csv (from the repository root,
server on the default ports):

    locust -f loadtest/locustfile.py TritonGrpcUser --headless -u 8 -r 2 -t 2m \
        --host 127.0.0.1:8001 --csv out/locust --model-dir smollm2

The HTTP variant: `TritonHttpUser --host http://127.0.0.1:8000`.  Workload options
(--trace, --num-requests, --max-prompt, ...) are listed by `locust -f loadtest/locustfile.py --help`.
"""

from __future__ import annotations

import itertools

# gRPC must be told about gevent before any channel exists (locust runs users as greenlets).
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

from locust import User, between, events, task  # noqa: E402

from bucketserve_bench.workload import DEFAULT_TRACES, LengthShaping, WorkloadSpec, build_workload, load_tokenizer  # noqa: E402
from bucketserve_client import GrpcClient, HttpClient  # noqa: E402


@events.init_command_line_parser.add_listener
def _options(parser):
    g = parser.add_argument_group("BucketServe workload")
    g.add_argument("--model-name", default="bucketserve", help="Triton model name")
    g.add_argument("--model-dir", default="smollm2", help="model directory (or smollm2 / tiny) whose tokenizer builds the prompts")
    g.add_argument("--trace", default=",".join(DEFAULT_TRACES), help="comma-separated Azure trace CSVs")
    g.add_argument("--num-requests", type=int, default=500, help="distinct requests, cycled")
    g.add_argument("--workload-seed", type=int, default=0)
    g.add_argument("--online-fraction", type=float, default=0.5)
    g.add_argument("--prompt-scale", type=float, default=0.25)
    g.add_argument("--output-scale", type=float, default=0.25)
    g.add_argument("--max-prompt", type=int, default=512)
    g.add_argument("--max-output", type=int, default=64)
    g.add_argument("--slo-ttft-ms", type=float, default=None, help="sent with online requests")
    g.add_argument("--slo-tpot-ms", type=float, default=None)


_workload: list = []
_next = itertools.count()


@events.init.add_listener
def _build_workload(environment, **_kwargs):
    """Before any user starts (loading the tokenizer takes seconds)."""
    o = environment.parsed_options
    if _workload or o is None:
        return
    from bucket_scheduler.runtime.models import resolve_model

    spec = WorkloadSpec(
        traces=[t for t in o.trace.split(",") if t],
        num_requests=o.num_requests,
        seed=o.workload_seed,
        online_fraction=o.online_fraction,
        shaping=LengthShaping(prompt_scale=o.prompt_scale, output_scale=o.output_scale, max_prompt=o.max_prompt, max_output=o.max_output),
    )
    reqs = build_workload(spec, load_tokenizer(resolve_model(o.model_dir)))
    for r in reqs:
        if r.online:
            r.slo_ttft_ms, r.slo_tpot_ms = o.slo_ttft_ms, o.slo_tpot_ms
    _workload.extend(reqs)


class _BucketServeUser(User):
    abstract = True
    wait_time = between(0.1, 1.0)
    protocol = ""

    def client_for(self, host: str, model: str):
        raise NotImplementedError

    def on_start(self):
        self.client = self.client_for(self.host, self.environment.parsed_options.model_name)

    @task
    def generate(self):
        req = _workload[next(_next) % len(_workload)] if _workload else None
        if req is None:
            return
        options = {"ignore_eos": True, "min_tokens": req.output_tokens, "temperature": 0.0}
        if req.slo_ttft_ms is not None:
            options["slo_ttft_ms"] = req.slo_ttft_ms
        if req.slo_tpot_ms is not None:
            options["slo_tpot_ms"] = req.slo_tpot_ms
        name = f"{self.protocol} {'online' if req.online else 'offline'}"
        fire = self.environment.events.request.fire
        try:
            res = self.client.generate(req.prompt, stream=True, max_tokens=req.output_tokens,
                                       request_class="online" if req.online else "offline", **options)
        except Exception as exc:  # transport failure: one failed E2E sample
            fire(request_type="E2E", name=name, response_time=0, response_length=0, exception=exc, context={})
            return
        if not res.ok:
            fire(request_type="E2E", name=name, response_time=(res.e2e_s or 0) * 1000, response_length=0,
                 exception=RuntimeError(f"{res.error_code}: {res.error}"), context={})
            return
        n = res.num_output_tokens or 0
        if res.ttft_s is not None:
            fire(request_type="TTFT", name=name, response_time=res.ttft_s * 1000, response_length=req.prompt_tokens, exception=None, context={})
        if res.tpot_s is not None:
            fire(request_type="TPOT", name=name, response_time=res.tpot_s * 1000, response_length=n, exception=None, context={})
        fire(request_type="E2E", name=name, response_time=res.e2e_s * 1000, response_length=n, exception=None, context={})


class TritonGrpcUser(_BucketServeUser):
    """tritonclient gRPC bidirectional streaming, one stream per request."""

    protocol = "grpc"
    host = "127.0.0.1:8001"

    def client_for(self, host, model):
        return GrpcClient(host.removeprefix("grpc://"), model)


class TritonHttpUser(_BucketServeUser):
    """Triton's HTTP generate_stream (server-sent events)."""

    protocol = "http"
    host = "http://127.0.0.1:8000"

    def client_for(self, host, model):
        return HttpClient(host, model)


