"""The engine: one background thread that runs schedule -> run -> postprocess.

Callers (Triton model, benchmarks, tests) use the API in api.py:

    engine = Engine(EngineConfig(...)); engine.start()
    engine.submit(GenerationRequest(...), on_output)    # InvalidRequest / Overloaded at once
    engine.cancel(request_id)                            # slot freed within one step
    engine.shutdown(timeout_s)

Guarantee: every accepted request gets exactly one RequestOutput with finished=True,
on every path (done, cancelled, model fault, shutdown). One lock guards the scheduler
and the table of live requests; the model runs outside it, so submit() never waits
for a forward pass.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from ..core.factory import make_scheduler
from ..core.interface import StepStats
from ..core.memory import MemoryPlanner, make_probe
from ..core.request import Request, RequestClass
from .api import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    EngineConfig,
    GenerationRequest,
    InvalidRequest,
    Overloaded,
    RequestMetrics,
    RequestOutput,
)
from .cpu_linear import prepack_linears
from .detokenizer import IncrementalDetokenizer
from .kv_cache import plan_spec
from .models import kv_spec_from_config, load_model, resolve_device, resolve_dtype, resolve_model
from .runner import Runner
from .sampling import is_greedy, make_generator
from .sequence import Sequence

log = logging.getLogger("bucketserve.engine")

MAX_CONSECUTIVE_FAULTS = 3  # past this many failed model steps in a row, `healthy` turns False
MAX_BACKOFF_FACTOR = 16  # canary retries back off from fault_backoff_s up to 16x it
# Test-only fault injection, off unless this environment variable is "1": a model step whose
# batch holds a prompt containing FAULT_MARKER raises, and while the file named by
# FAULT_FILE_ENV exists every model step (the health canary included) raises: a fault that
# is not any request's input (see docs/reliability.md).
FAULT_ENV = "BUCKETSERVE_TEST_FAULTS"
FAULT_FILE_ENV = "BUCKETSERVE_TEST_FAULT_FILE"
FAULT_MARKER = "<<bucketserve-injected-fault>>"
MAX_STOP_STRINGS = 16
# This runner computes decode matmuls on real tokens only (padding costs only masked
# attention), so full batches matter more than tight ones: unless told otherwise the bucket
# policy splits at the median of the waiting lengths (a split always makes progress; the
# paper's rule stays available as bucket_mode=algorithm1) with no refill padding target
# (measured in docs/benchmarks.md, Engine). The core's own defaults suit a fully padded runtime.
RUNTIME_SCHEDULER_DEFAULTS = {"bucket": {"bucket_mode": "median", "refill_padding_target": 0.0}}
OnOutput = Callable[[RequestOutput], None]


@dataclass
class EngineCounters:
    submitted: int = 0
    rejected_invalid: int = 0
    rejected_overloaded: int = 0
    finished: int = 0  # finals with stop / length
    cancelled: int = 0
    errored: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    steps: int = 0
    faults: int = 0
    preemptions: int = 0


@dataclass
class EngineStats:
    """A snapshot for metrics and logs."""

    healthy: bool
    accepting: bool
    num_waiting: int
    num_running: int
    kv_bytes: int
    consecutive_faults: int
    last_step: StepStats | None
    last_step_s: float
    counters: EngineCounters
    # Runner totals: useful / computed slots.
    prefill_padding_efficiency: float
    decode_kv_efficiency: float
    prefill_tokens: int
    decode_tokens: int


@dataclass(eq=False)
class _Live:
    """A request the engine has accepted and not yet answered with a final."""

    gen: GenerationRequest
    core: Request
    seq: Sequence
    on_output: OnOutput
    prompt_text: str
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    prefix_sent: bool = False
    done: bool = False
    cancel_requested: bool = False
    waiting: bool = True  # counted in the admission queue


class Engine:
    def __init__(self, config: EngineConfig | None = None):
        self.config = config = config or EngineConfig()
        self._validate_config(config)
        torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)))
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(_batch_invariant_dtype(config), self.device)
        if config.batch_invariant and self.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = False  # TF32 rounding depends on the kernel picked
        self.model_path = resolve_model(config.model_dir)
        model, self.tokenizer = load_model(self.model_path, self.dtype, self.device, config.trust_remote_code)
        self.prepacked_linears = prepack_linears(model)  # bf16 on CPU only; same results, faster
        # The engine thread detokenizes with its own tokenizer object, so submit() threads
        # encoding never share a Rust tokenizer with it.
        self._detok_tokenizer = _load_tokenizer(self.model_path, config.trust_remote_code)
        self.model = model
        text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        max_pos = getattr(text_cfg, "max_position_embeddings", None)
        if max_pos and config.max_model_len > max_pos:
            raise ValueError(f"max_model_len {config.max_model_len} is more than this model's "
                             f"max_position_embeddings {max_pos}; lower max_model_len")
        self.runner = Runner(model, self._detok_tokenizer, fast_path=config.fast_path)
        self.eos_ids = _eos_ids(model, self.tokenizer)
        self.kv_spec = plan_spec(kv_spec_from_config(model.config, self.dtype))
        probe = make_probe(config.memory_probe, device=self.device)
        self.planner = MemoryPlanner(self.kv_spec, probe, memory_fraction=config.memory_fraction)
        self.scheduler = make_scheduler(
            config.policy, self.planner, config.max_model_len, config.max_num_seqs,
            **{**RUNTIME_SCHEDULER_DEFAULTS.get(config.policy, {}), **config.scheduler_options},
        )
        # Re-entrant: on_output runs under it, and a callback may call cancel() or submit().
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._tok_lock = threading.Lock()
        self._live: dict[str, _Live] = {}
        self._cancels: list[str] = []
        self._queue_requests = 0
        self._queue_tokens = 0
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None
        self._consecutive_faults = 0
        self._canary_at = 0.0  # when unhealthy: the next health canary's time
        self._backoff_s = config.fault_backoff_s
        self._drain_deadline: float | None = None
        self._next_drain_check = 0.0
        self._last_step: StepStats | None = None
        self._last_step_s = 0.0
        self.counters = EngineCounters()
        self._fault_file = os.environ.get(FAULT_FILE_ENV, "")
        if os.environ.get(FAULT_ENV) == "1":
            log.warning("%s=1: test fault injection is on", FAULT_ENV)
            self.runner.fault_hook = self._injected_fault

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="bucketserve-engine", daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown(timeout_s=0.0)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop admission; let in-flight requests finish for up to timeout_s, then end the
        rest with finish_reason "error"."""
        with self._lock:
            self._accepting = False
            self._wake.notify_all()
        deadline = time.monotonic() + max(0.0, timeout_s)
        while time.monotonic() < deadline:
            with self._lock:
                if not self._live:
                    break
            time.sleep(0.01)
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, timeout_s))
        # Whatever is left (no thread, or it is stuck in a forward) gets its final here;
        # _final() makes sure nobody gets two.
        self._fail_all("engine shut down before the request finished")

    @property
    def healthy(self) -> bool:
        alive = self._thread is None or self._thread.is_alive() or self._stop
        return alive and self._consecutive_faults < MAX_CONSECUTIVE_FAULTS

    def retry_in_s(self) -> float:
        """When unhealthy: seconds until the engine tries a canary step to recover."""
        return max(0.0, self._canary_at - time.monotonic())

    # -- the API ---------------------------------------------------------------------------
    def submit(self, req: GenerationRequest, on_output: OnOutput) -> None:
        """Validate and enqueue; raises InvalidRequest or Overloaded, else the request is
        accepted and will get exactly one final output."""
        cfg = self.config
        try:
            params = self._check_request(req)
            prompt_text, prompt_ids = self._tokenize(req)
            if len(prompt_ids) + params.max_tokens > cfg.max_model_len:
                room = cfg.max_model_len - len(prompt_ids)
                fix = f"lower max_tokens to at most {room}" if room >= 1 else "shorten the prompt"
                raise InvalidRequest(
                    f"prompt is {len(prompt_ids)} tokens and max_tokens {params.max_tokens}: together more than "
                    f"max_model_len {cfg.max_model_len}; {fix}"
                )
        except InvalidRequest:
            self.counters.rejected_invalid += 1
            raise
        now = time.monotonic()
        online = req.req_class == "online"
        core = Request(
            request_id=req.request_id,
            prompt_len=len(prompt_ids),
            max_new_tokens=params.max_tokens,
            arrival_time=now,
            req_class=RequestClass.ONLINE if online else RequestClass.OFFLINE,
            priority=req.priority,
            slo_ttft_s=req.slo_ttft_ms / 1000.0 if req.slo_ttft_ms is not None else None,
            slo_tpot_s=req.slo_tpot_ms / 1000.0 if req.slo_tpot_ms is not None else None,
        )
        seq = Sequence(
            request_id=req.request_id,
            prompt_ids=prompt_ids,
            params=params,
            eos_ids=self.eos_ids,
            detok=IncrementalDetokenizer(self._detok_tokenizer, prompt_ids),
            generator=None if is_greedy(params) else make_generator(params.seed, self.device),
        )
        live = _Live(gen=req, core=core, seq=seq, on_output=on_output, prompt_text=prompt_text)
        with self._lock:
            if not self._accepting:
                self.counters.rejected_overloaded += 1
                raise Overloaded("engine is shutting down; not accepting requests")
            if req.request_id in self._live:
                self.counters.rejected_invalid += 1
                raise InvalidRequest(f"request_id {req.request_id!r} is already in flight; use a unique id")
            # Offline requests see lower caps: under overload they are shed first.
            share = 1.0 if online else cfg.offline_queue_fraction
            max_requests = math.ceil(cfg.max_queue_requests * share)
            max_tokens = math.ceil(cfg.max_queue_tokens * share)
            who = "" if online else f" for offline requests ({cfg.offline_queue_fraction:g} of the caps)"
            if self._queue_requests >= max_requests:
                self.counters.rejected_overloaded += 1
                raise Overloaded(
                    f"queue full: {self._queue_requests} requests waiting, the limit{who} is {max_requests} "
                    f"(max_queue_requests={cfg.max_queue_requests}); retry later"
                )
            if self._queue_tokens + len(prompt_ids) > max_tokens:
                self.counters.rejected_overloaded += 1
                raise Overloaded(
                    f"queue full: {self._queue_tokens} prompt tokens waiting, the limit{who} is {max_tokens} "
                    f"(max_queue_tokens={cfg.max_queue_tokens}); retry later"
                )
            if not self.scheduler.add(core):
                self.counters.rejected_invalid += 1
                raise InvalidRequest(
                    f"request can never be scheduled: {core.reject_reason} (memory budget now "
                    f"{self.scheduler.planner.budget_bytes(self.runner.kv_bytes())} bytes; "
                    f"{self.kv_spec.bytes_per_token} KV bytes per token); shorten the prompt or lower max_tokens"
                )
            self._live[req.request_id] = live
            self._queue_requests += 1
            self._queue_tokens += len(prompt_ids)
            self.counters.submitted += 1
            self.counters.prompt_tokens += len(prompt_ids)
            self._wake.notify_all()

    def cancel(self, request_id: str) -> bool:
        """Ask to stop a request; its final (finish_reason "cancelled") follows within one
        step. False if the id is not in flight."""
        with self._lock:
            live = self._live.get(request_id)
            if live is None or live.done:
                return False
            if not live.cancel_requested:
                live.cancel_requested = True
                self._cancels.append(request_id)
                self._wake.notify_all()
            return True

    def stats(self) -> EngineStats:
        c = self.runner.counters
        with self._lock:
            return EngineStats(
                healthy=self.healthy,
                accepting=self._accepting,
                num_waiting=self.scheduler.num_waiting,
                num_running=self.scheduler.num_running,
                kv_bytes=self.runner.kv_bytes(),
                consecutive_faults=self._consecutive_faults,
                last_step=self._last_step,
                last_step_s=self._last_step_s,
                counters=EngineCounters(**vars(self.counters)),
                prefill_padding_efficiency=c.prefill_tokens / c.prefill_slots if c.prefill_slots else 1.0,
                decode_kv_efficiency=c.decode_kv_tokens / c.decode_kv_slots if c.decode_kv_slots else 1.0,
                prefill_tokens=c.prefill_tokens,
                decode_tokens=c.decode_tokens,
            )

    def num_in_flight(self) -> int:
        with self._lock:
            return len(self._live)

    # -- validation --------------------------------------------------------------------------
    @staticmethod
    def _validate_config(cfg: EngineConfig) -> None:
        if not 0.0 < cfg.offline_queue_fraction <= 1.0:
            raise ValueError("offline_queue_fraction must be in (0, 1]")
        if cfg.max_model_len < 2 or cfg.max_num_seqs < 1:
            raise ValueError("max_model_len must be >= 2 and max_num_seqs >= 1")
        if cfg.default_max_tokens < 1:
            raise ValueError("default_max_tokens must be >= 1")

    def _check_request(self, req: GenerationRequest):
        s = req.sampling
        if not isinstance(req.request_id, str) or not req.request_id:
            raise InvalidRequest("request_id must be a non-empty string")
        if not isinstance(req.prompt, str) or not req.prompt:
            raise InvalidRequest("prompt is empty; send at least one character of text")
        max_tokens = self.config.default_max_tokens if s.max_tokens is None else s.max_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        if not _finite(s.temperature) or s.temperature < 0:
            raise InvalidRequest(f"temperature must be >= 0 (0 = greedy), got {s.temperature!r}")
        if not isinstance(s.top_k, int) or s.top_k < 0:
            raise InvalidRequest(f"top_k must be an integer >= 0 (0 = off), got {s.top_k!r}")
        if not _finite(s.top_p) or not 0.0 < s.top_p <= 1.0:
            raise InvalidRequest(f"top_p must be in (0, 1], got {s.top_p!r}")
        if not isinstance(s.min_tokens, int) or not 0 <= s.min_tokens <= max_tokens:
            raise InvalidRequest(f"min_tokens must be an integer in [0, max_tokens={max_tokens}], got {s.min_tokens!r}")
        if s.seed is not None and (not isinstance(s.seed, int) or not 0 <= s.seed < 2**63):
            raise InvalidRequest(f"seed must be an integer in [0, 2^63) or unset, got {s.seed!r}")
        stop = list(s.stop or [])
        if len(stop) > MAX_STOP_STRINGS or not all(isinstance(x, str) and x for x in stop):
            raise InvalidRequest(f"stop must be a list of at most {MAX_STOP_STRINGS} non-empty strings")
        if req.req_class not in ("online", "offline"):
            raise InvalidRequest(f"req_class must be 'online' or 'offline', got {req.req_class!r}")
        for name in ("slo_ttft_ms", "slo_tpot_ms"):
            v = getattr(req, name)
            if v is not None and (not _finite(v) or v <= 0):
                raise InvalidRequest(f"{name} must be > 0 when set, got {v!r}")
        if max_tokens == s.max_tokens and stop == s.stop:
            return s
        return replace(s, max_tokens=max_tokens, stop=stop)

    def _tokenize(self, req: GenerationRequest) -> tuple[str, list[int]]:
        with self._tok_lock:
            if req.apply_chat_template:
                if not getattr(self.tokenizer, "chat_template", None):
                    raise InvalidRequest("apply_chat_template is set but this model's tokenizer has no chat template")
                text = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": req.prompt}], add_generation_prompt=True, tokenize=False
                )
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            else:
                ids = self.tokenizer(req.prompt, add_special_tokens=True)["input_ids"]
        if not ids:
            raise InvalidRequest("prompt encodes to zero tokens; send some text")
        return req.prompt, list(ids)

    # -- the loop ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._check_drain()
            self._check_health()
            with self._lock:
                while not self._stop and not self._cancels and not self.scheduler.has_work():
                    self._wake.wait(timeout=0.5 if self.healthy else min(0.5, max(0.01, self.retry_in_s())))
                    if not self.healthy and self.retry_in_s() <= 0:
                        break
                    if self.config.drain_file and self._drain_deadline is None:
                        break  # look for the drain file now and then while idle too
                if self._stop:
                    return
                if not self._cancels and not self.scheduler.has_work():
                    continue
            try:
                self._step()
            except Exception:  # a bug outside the model call: fail what is live, keep serving
                log.exception("engine step failed outside the model")
                self._count_fault()
                self._fail_all("internal engine error", reset=True)

    def _count_fault(self) -> None:
        """A model step failed for a reason that is no request's input. Past
        MAX_CONSECUTIVE_FAULTS in a row the engine is unhealthy (the model refuses requests)
        until a canary step succeeds; canaries back off from fault_backoff_s."""
        self.counters.faults += 1
        self._consecutive_faults += 1
        if self._consecutive_faults == MAX_CONSECUTIVE_FAULTS:
            self._backoff_s = self.config.fault_backoff_s
            self._canary_at = time.monotonic() + self._backoff_s
            log.error("%d model steps failed in a row: unhealthy; canary step in %.1fs",
                      self._consecutive_faults, self._backoff_s)

    def _check_health(self) -> None:
        if self.healthy or time.monotonic() < self._canary_at:
            return
        try:
            self.runner.canary()
        except Exception as exc:  # noqa: BLE001
            self._backoff_s = min(self._backoff_s * 2, self.config.fault_backoff_s * MAX_BACKOFF_FACTOR)
            self._canary_at = time.monotonic() + self._backoff_s
            log.error("canary step failed (%s: %s); next try in %.1fs", type(exc).__name__, exc, self._backoff_s)
            return
        log.warning("canary step succeeded: healthy again, accepting requests")
        self._consecutive_faults = 0

    def _check_drain(self) -> None:
        """Shutdown announced through config.drain_file: stop admission at once, fail what is
        still in flight after drain_timeout_s (each request gets its final before Triton's exit
        timeout runs out)."""
        if not self.config.drain_file:
            return
        now = time.monotonic()
        if self._drain_deadline is None:
            if now < self._next_drain_check:
                return
            self._next_drain_check = now + 0.1
            if not os.path.exists(self.config.drain_file):
                return
            log.warning("drain file found: no new requests; in-flight ones get %.1fs", self.config.drain_timeout_s)
            with self._lock:
                self._accepting = False
                self._drain_deadline = now + self.config.drain_timeout_s
        elif now >= self._drain_deadline and self.num_in_flight():
            self._fail_all(f"server is shutting down; request not finished within drain_timeout_s="
                           f"{self.config.drain_timeout_s:g}", reset=True)

    def _step(self) -> None:
        t0 = time.monotonic()
        with self._lock:
            cancels, self._cancels = self._cancels, []
            for rid in cancels:
                self._cancel_now(rid, t0)
            out = self.scheduler.schedule(t0)
            self._last_step = out.stats
            self.counters.steps += 1
            for r in out.preempted:
                self.counters.preemptions += 1
                self.runner.remove(r.request_id)
            new = []
            for r in out.prefill:
                live = self._live.get(r.request_id)
                if live is None:
                    continue
                if live.waiting:
                    live.waiting = False
                    self._queue_requests -= 1
                    self._queue_tokens -= live.core.prompt_len
                if live.scheduled_at is None:
                    live.scheduled_at = t0
                new.append(live)
            running_ids = {r.request_id for r in out.running}
            # Rows the scheduler no longer runs (it should have named them preempted) go too.
            for s in list(self.runner.rows):
                if s.request_id not in running_ids:
                    self.runner.remove(s.request_id)
            # The budget fell below what we hold (memory pressure): give back what we can.
            self.runner.kv.shrink_to_fit(out.stats.budget_bytes)
        if out.is_empty and not new:
            with self._lock:
                if not self._stop and not self._cancels:
                    self._wake.wait(timeout=0.005)  # waiting requests that do not fit yet
            return
        batch = [lv.seq for lv in new]
        try:
            if batch:
                self.runner.prefill(batch)
                self._postprocess(new, time.monotonic())
            if self.runner.rows:
                decoded = [self._live[s.request_id] for s in self.runner.rows if s.request_id in self._live]
                self.runner.decode()
                self._postprocess(decoded, time.monotonic())
        except Exception as exc:  # a model step failed: fail this batch only, keep serving
            log.exception("model step failed")
            self._count_fault()
            victims = {lv.seq.request_id for lv in new} | {s.request_id for s in self.runner.rows}
            self.runner.reset()
            msg = f"model step failed: {type(exc).__name__}: {exc}"
            now = time.monotonic()
            with self._lock:
                for rid in victims:
                    live = self._live.get(rid)
                    if live is not None:
                        self.scheduler.finish(rid, now)
                        self._final(live, FINISH_ERROR, now, error=msg)
        else:
            self._consecutive_faults = 0
        with self._lock:
            self.scheduler.set_kv_bytes_in_use(self.runner.kv_bytes())
        self._last_step_s = time.monotonic() - t0

    def _postprocess(self, lives: list[_Live], now: float) -> None:
        """After a forward: hand out deltas, finish what stopped, tell the scheduler."""
        with self._lock:
            for live in lives:
                if live.done:
                    continue
                seq = live.seq
                if live.first_token_at is None:
                    live.first_token_at = now
                live.last_token_at = now
                self.scheduler.on_tokens(seq.request_id, 1, now)
                self.counters.output_tokens += 1
                if seq.finished:
                    self.runner.remove(seq.request_id)
                    self.scheduler.finish(seq.request_id, now)
                    self._final(live, seq.finish_reason, now, error=seq.error)
                elif live.gen.stream:
                    delta = seq.take_delta()
                    if delta or not live.prefix_sent and not live.gen.exclude_input_in_output:
                        self._emit(live, RequestOutput(request_id=seq.request_id, delta_text=self._with_prefix(live, delta),
                                                       num_input_tokens=len(seq.prompt_ids),
                                                       num_output_tokens=len(seq.output_ids)))

    def _injected_fault(self, phase: str, seqs) -> None:
        """Test-only (FAULT_ENV=1): fail the step whose batch holds a marked prompt, and every
        step while the fault file exists."""
        if self._fault_file and os.path.exists(self._fault_file):
            raise RuntimeError(f"injected fault in {phase} (test hook {FAULT_FILE_ENV})")
        for s in seqs:
            live = self._live.get(s.request_id)
            if live is not None and FAULT_MARKER in live.gen.prompt:
                raise RuntimeError(f"injected fault in {phase} (test hook {FAULT_ENV})")

    def _cancel_now(self, rid: str, now: float) -> None:
        live = self._live.get(rid)
        if live is None or live.done:
            return
        self.runner.remove(rid)
        self.scheduler.cancel(rid, now)
        self._final(live, FINISH_CANCELLED, now)

    # -- outputs ------------------------------------------------------------------------------
    def _with_prefix(self, live: _Live, text: str) -> str:
        if not live.gen.exclude_input_in_output and not live.prefix_sent:
            live.prefix_sent = True
            return live.prompt_text + text
        return text

    def _final(self, live: _Live, reason: str, now: float, error: str | None = None) -> None:
        """The one finished=True output of a request (caller holds the lock)."""
        if live.done:
            return
        live.done = True
        self._live.pop(live.seq.request_id, None)
        if live.waiting:
            live.waiting = False
            self._queue_requests -= 1
            self._queue_tokens -= live.core.prompt_len
        seq = live.seq
        if live.gen.stream:
            text = seq.take_delta() if reason not in (FINISH_ERROR,) else ""
        else:
            text = seq.text if reason != FINISH_ERROR else ""
        if reason == FINISH_CANCELLED:
            self.counters.cancelled += 1
        elif reason == FINISH_ERROR:
            self.counters.errored += 1
        else:
            self.counters.finished += 1
        self._emit(
            live,
            RequestOutput(
                request_id=seq.request_id,
                delta_text=self._with_prefix(live, text),
                finished=True,
                finish_reason=reason,
                error_message=error,
                num_input_tokens=len(seq.prompt_ids),
                num_output_tokens=len(seq.output_ids),
                metrics=self._metrics(live, now),
            ),
        )

    def _metrics(self, live: _Live, now: float) -> RequestMetrics:
        arrival = live.core.arrival_time
        m = RequestMetrics(arrival_time=arrival, e2e_s=now - arrival)
        if live.scheduled_at is not None:
            m.queue_s = live.scheduled_at - arrival
        if live.first_token_at is not None:
            m.ttft_s = live.first_token_at - arrival
            n = len(live.seq.output_ids)
            if n > 1 and live.last_token_at is not None:
                m.tpot_s = (live.last_token_at - live.first_token_at) / (n - 1)
        return m

    def _emit(self, live: _Live, out: RequestOutput) -> None:
        try:
            live.on_output(out)
        except Exception:  # the caller's callback must not take the engine down
            log.exception("on_output callback raised for %s", out.request_id)

    def _fail_all(self, message: str, reset: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if reset:
                self.runner.reset()
            for live in list(self._live.values()):
                self.scheduler.finish(live.seq.request_id, now)
                self._final(live, FINISH_ERROR, now, error=message)


def _batch_invariant_dtype(cfg: EngineConfig) -> str:
    """batch_invariant: greedy output must not depend on the batch a request lands in. In
    bfloat16 the rounding of a row's matmuls and attention changes with the batch's shape and
    flips near-ties (measured: 4 of 8 SmolLM2 answers differed between alone and among 24);
    float32 keeps every row's numbers within ~1e-5 of alone, below any argmax gap seen."""
    if not cfg.batch_invariant:
        return cfg.dtype
    if cfg.dtype not in ("auto", "float32", "fp32"):
        raise ValueError(f"batch_invariant runs in float32; remove dtype={cfg.dtype!r} or set dtype=float32")
    return "float32"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _load_tokenizer(path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)


def _eos_ids(model, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(x) for x in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
