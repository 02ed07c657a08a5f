"""The engine's in-process API: what callers (Triton model, benchmarks, tests) hand in and get back.

Plain dataclasses, no torch import, so the Triton adapter can import them cheaply.

    engine = Engine(EngineConfig(...)); engine.start()
    engine.submit(GenerationRequest(...), on_output)   # raises InvalidRequest / Overloaded at once
    engine.cancel(request_id)                           # slot freed within one step; one final follows
    engine.shutdown(timeout_s)                          # stop admission, finish or fail what is in flight

on_output(RequestOutput) is called from the engine thread: once per text delta
when streaming, and exactly once with finished=True.  It must be cheap (push to
a queue); it must not block.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class InvalidRequest(ValueError):
    """Bad input; maps to INVALID_ARG. The message says what to fix."""


class Overloaded(RuntimeError):
    """Admission refused (queue full, shutting down); maps to UNAVAILABLE."""


@dataclass
class SamplingParams:
    max_tokens: int | None = None  # None: the engine's default_max_tokens
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0


@dataclass
class GenerationRequest:
    request_id: str
    prompt: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stream: bool = False
    req_class: str = "offline"  # "online" | "offline"
    priority: int = 0
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    exclude_input_in_output: bool = True
    apply_chat_template: bool = False


@dataclass
class RequestMetrics:
    arrival_time: float = 0.0
    queue_s: float | None = None  # arrival -> first scheduled
    ttft_s: float | None = None  # arrival -> first token
    tpot_s: float | None = None  # mean time per output token after the first
    e2e_s: float | None = None


# finish_reason values
FINISH_STOP = "stop"  # EOS or a stop string
FINISH_LENGTH = "length"  # max_tokens reached
FINISH_CANCELLED = "cancelled"
FINISH_ERROR = "error"  # engine fault or shutdown; error_message says which, error_kind which class

# error_kind values: what a client may do about an error final (the sender maps them onto Triton codes)
ERROR_UNAVAILABLE = "unavailable"  # shutdown or drain: retry elsewhere / later
ERROR_INTERNAL = "internal"  # an engine or model fault


@dataclass
class RequestOutput:
    request_id: str
    delta_text: str = ""
    finished: bool = False
    finish_reason: str | None = None
    error_message: str | None = None  # set when finish_reason is "error"
    error_kind: str | None = None  # ERROR_UNAVAILABLE | ERROR_INTERNAL, set with error_message
    num_input_tokens: int = 0
    num_output_tokens: int = 0
    metrics: RequestMetrics = field(default_factory=RequestMetrics)


@dataclass
class EngineConfig:
    """Engine settings. The Triton model fills these from config.pbtxt parameters;
    the launcher's flags override them for a run."""

    model_dir: str | None = None  # None: the default model (SmolLM2-135M-Instruct, prepared on first use)
    policy: str = "bucket"  # bucket | static | continuous | uellm
    device: str = "auto"  # auto | cpu | cuda | cuda:<index> (a KIND_GPU instance gets its own, serving/settings.py)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    threads: int = 0  # torch intra-op threads; 0 = all cores
    max_model_len: int = 2048  # prompt + generated tokens, per request
    default_max_tokens: int = 128
    max_num_seqs: int = 32  # running sequences at most
    memory_fraction: float = 0.9  # safe share of live free memory
    memory_probe: str = "auto"  # auto | psutil | cuda | nvml | fixed:<bytes>
    max_queue_requests: int = 1024  # admission caps: past them, Overloaded ("queue full")
    max_queue_tokens: int = 4_000_000
    # Offline requests are admitted only while the queue is below this share of both caps, so
    # under overload offline is shed first and online keeps the rest of the queue.
    offline_queue_fraction: float = 0.8
    drain_timeout_s: float = 10.0  # on unload / shutdown: how long in-flight requests may finish
    # When this file appears the engine stops admission and gives in-flight requests
    # drain_timeout_s before failing them (the launcher creates it just before SIGTERM: Triton
    # waits for decoupled requests before it calls finalize(), so finalize() alone is too late).
    drain_file: str = ""
    trust_remote_code: bool = False
    # Greedy answers independent of batching (float32 compute; README, "Settings").
    batch_invariant: bool = False
    # Llama-family models run our own lean forward (runtime/fast_step.py); false: transformers' forward.
    fast_path: bool = True
    # With the lean eager step and chunked prefill: a step is one forward pass (the prompt chunks
    # and the batch's decode share each weight read; a whole prompt is one chunk). false: one
    # pass for the whole prompts, one per chunk, one for the decode.
    mixed_step: bool = True
    # The lean decode step's row-wise pieces through torch.compile: off | inductor (one graph
    # per shape-grid batch size) | inductor-dynamic | cudagraphs (GPU); runtime/compiled_step.py.
    compile: str = "off"
    # After MAX_CONSECUTIVE_FAULTS failed model steps the engine refuses requests and tries a
    # canary step after this many seconds (doubling per failed canary, up to 16x).
    fault_backoff_s: float = 5.0
    scheduler_options: dict = field(default_factory=dict)  # policy knobs passed to the core's factory

    def policy_options(self) -> dict:
        """The scheduler options the engine runs with: the runtime's own defaults, then the
        settings' scheduler.<option> values."""
        return {**RUNTIME_SCHEDULER_DEFAULTS.get(self.policy, {}), **self.scheduler_options}


# The one place where the engine's policy defaults differ from the core's. This runner computes
# decode matmuls on real tokens only (padding costs only masked attention), so full batches
# matter more than tight ones: unless told otherwise the bucket policy splits at the median of
# the waiting lengths (a split always makes progress; the paper's rule stays available as
# bucket_mode=algorithm1) with no refill padding target (measured in docs/benchmarks.md, Engine).
# The core's own defaults (core/boundaries.py, core/scheduler.py) suit a fully padded runtime.
#
# Prefill mixed into decode (bucket and continuous): at most 256 prompt tokens a step, longer
# prompts in chunks, so the running rows keep decoding while newcomers are prefilled; without
# a budget the batch alternated between decoding and prefilling whole admissions (TTFT p50 4-12x,
# TPOT p99 8-16x worse on the Azure mix: docs/benchmarks.md, Engine, "Prefill mixed into decode").
# static and uellm stay the batchers they stand for (a batch prefilled at once). The bucket
# policy takes each step's newcomers from one bucket (little prefill padding) and decodes across
# buckets (refill_scope=wide: a CPU decode step costs about the same for 3 rows as for 32);
# it beat refilling from the running batch's bucket only in the same measurements.
PREFILL_DEFAULTS = {"max_num_batched_tokens": 256, "chunked_prefill": True}
RUNTIME_SCHEDULER_DEFAULTS = {
    "bucket": {"bucket_mode": "median", "refill_padding_target": 0.0, "refill_scope": "wide", **PREFILL_DEFAULTS},
    "continuous": dict(PREFILL_DEFAULTS),
}
