"""BucketServe as a decoupled Triton Python-backend model (thin adapter).

execute() only validates each request, hands it to the engine and returns; it sends nothing
and touches no metric. The engine thread runs the model for every request; the Sender thread
makes every send(), is_cancelled() check, metric update and log call. Every request ends in
exactly one FINAL response: success, INVALID_ARG, UNAVAILABLE (overload, shutdown), CANCELLED
or INTERNAL.

Settings come from config.pbtxt `parameters` (see README, "Settings").
"""

import json
import uuid

import triton_python_backend_utils as pb_utils

from bucket_scheduler.runtime.api import InvalidRequest, Overloaded
from bucket_scheduler.runtime.engine import Engine
from bucket_scheduler.serving.metrics import Metrics
from bucket_scheduler.serving.sender import Sender
from bucket_scheduler.serving.settings import engine_config_from_triton_args
from bucket_scheduler.serving.validation import parse_request


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException("bucketserve needs model_transaction_policy { decoupled: true }")
        self.name = args["model_name"]
        self.config = engine_config_from_triton_args(args)  # KIND_GPU: the instance's own GPU
        pb_utils.Logger.log_info(f"{self.name}: starting engine ({self.config})")
        self.engine = Engine(self.config)
        self.engine.start()
        self.metrics = Metrics(pb_utils, model=self.name, version=args["model_version"])
        self.sender = Sender(pb_utils, self.engine, self.metrics, logger=pb_utils.Logger, stats_fn=self.engine.stats)
        self.sender.start()

    def execute(self, requests):
        for request in requests:
            self._submit(request)
        return None

    def _submit(self, request):
        response_sender = request.get_response_sender()
        request_id = uuid.uuid4().hex
        try:
            inputs = {t.name(): t.as_numpy() for t in request.inputs()}
            parameters = json.loads(request.parameters() or "{}")
            gen = parse_request(inputs, parameters, request_id, self.config)
        except InvalidRequest as exc:
            self.sender.fail(request_id, "INVALID_ARG", str(exc), "invalid", response_sender)
            return
        except Exception as exc:  # noqa: BLE001 - never leave a request without its FINAL
            self.sender.fail(request_id, "INVALID_ARG", f"could not read the request: {exc}", "invalid", response_sender)
            return
        if not self.engine.healthy:
            # Triton 2.51 gives a Python model no way to turn itself not-ready, so a model whose
            # steps keep failing refuses work at once rather than fail it slowly; the engine
            # recovers by itself once a canary step succeeds (docs/reliability.md).
            message = (f"{self.name} is unhealthy: {self.engine.stats().consecutive_faults} model steps failed "
                       f"in a row; a health check runs in {self.engine.retry_in_s():.1f}s, retry after it")
            self.sender.fail(request_id, "UNAVAILABLE", message, "rejected", response_sender)
            return
        # Register before submit: the engine may answer before submit() returns.
        self.sender.register(response_sender, gen)
        try:
            self.engine.submit(gen, self.sender.on_output)
        except InvalidRequest as exc:
            self.sender.fail(request_id, "INVALID_ARG", str(exc), "invalid")
        except Overloaded as exc:
            self.sender.fail(request_id, "UNAVAILABLE", str(exc), "rejected")
        except Exception as exc:  # noqa: BLE001
            self.sender.fail(request_id, "INTERNAL", f"engine refused the request: {exc}", "error")

    def finalize(self):
        # Stop admission and let the engine finish or fail what it holds (each gets its final
        # through the sender), then answer whatever is still pending and join the sender.
        # Triton calls finalize() only after every decoupled request has had its final, so the
        # drain itself starts earlier, from drain_file (docs/reliability.md, Shutdown); here it
        # ends what is left, well inside --exit-timeout-secs, past which Triton aborts.
        self.engine.shutdown(timeout_s=self.config.drain_timeout_s)
        self.sender.stop(timeout_s=5.0)
