"""The engine: one background thread that runs schedule -> run -> postprocess (API: api.py).

Guarantee: every accepted request gets exactly one RequestOutput with finished=True, on every
path (done, cancelled, model fault, shutdown). One lock guards the scheduler and the table of
live requests; the model runs outside it, so submit() never waits for a forward pass.

Who owns what: requests.py builds a request (validate, tokenize, sequence); admission.py
decides whether it may queue and tracks health; the scheduler owns which requests run, and its
output tells the runner what to add, keep and drop; the runner owns the rows; this file wires
them and owns the table of live requests and their finals.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import torch

from ..core.factory import make_scheduler
from ..core.interface import PrefillChunk, StepStats
from ..core.memory import MemoryPlanner
from .admission import Admission, Health
from .api import ERROR_INTERNAL, ERROR_UNAVAILABLE, FINISH_CANCELLED, FINISH_ERROR, EngineConfig, GenerationRequest, InvalidRequest, Overloaded
from .compiled_step import set_cache_dir
from .cpu_linear import prepack_linears
from .faults import fault_hook_from_env
from .kv_cache import plan_spec
from .models import cache_dir, kv_spec_from_config, load_model, resolve_device, resolve_dtype, resolve_model
from .probes import make_probe
from .requests import LiveRequest, OnOutput, RequestBuilder, eos_ids_of, load_tokenizer
from .runner import Runner
from .validation import validate_config

log = logging.getLogger("bucketserve.engine")


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
    compiled_shapes: int = 0  # decode shapes compiled (compile setting)
    compile_seconds: float = 0.0  # wall time spent compiling them


class Engine:
    def __init__(self, config: EngineConfig | None = None):
        self.config = config = config or EngineConfig()
        validate_config(config)
        torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)))
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(_batch_invariant_dtype(config), self.device)
        if config.batch_invariant and self.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = False  # TF32 rounding depends on the kernel picked
        self.model_path = resolve_model(config.model_dir)
        model, self.tokenizer = load_model(self.model_path, self.dtype, self.device, config.trust_remote_code)
        self.prepacked_linears = prepack_linears(model)  # bf16 on CPU only; same results, faster
        self.model = model
        _check_max_model_len(model, config.max_model_len)
        detok_tokenizer = load_tokenizer(self.model_path, config.trust_remote_code)
        self.builder = RequestBuilder(config, self.tokenizer, detok_tokenizer, eos_ids_of(model, self.tokenizer),
                                      self.device)
        if config.compile != "off":
            set_cache_dir(cache_dir())  # compiled artifacts survive a restart
        self.runner = Runner(model, detok_tokenizer, fast_path=config.fast_path, compile=config.compile,
                             max_rows=config.max_num_seqs)
        self.runner.warm_up()  # before ready: every decode shape is compiled when requests come
        self.kv_spec = plan_spec(kv_spec_from_config(model.config, self.dtype))
        probe = make_probe(config.memory_probe, device=self.device)
        self.planner = MemoryPlanner(self.kv_spec, probe, memory_fraction=config.memory_fraction)
        self.scheduler = make_scheduler(config.policy, self.planner, config.max_model_len, config.max_num_seqs,
                                        **config.policy_options())
        # One forward pass a step where the runner can and every prompt may be staged (the
        # planner charges a staging KV to each admission only when chunking is on).
        prefill = getattr(self.scheduler, "prefill", None)
        self._mixed = config.mixed_step and self.runner.mixes and prefill is not None and prefill.chunking
        self.admission = Admission(config)
        self.health = Health(config.fault_backoff_s)
        # Re-entrant: on_output runs under it, and a callback may call cancel() or submit().
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._live: dict[str, LiveRequest] = {}
        self._cancels: list[str] = []
        self._stop = False
        self._thread: threading.Thread | None = None
        self._last_step: StepStats | None = None
        self._last_step_s = 0.0
        self.counters = EngineCounters()
        self.runner.fault_hook = fault_hook_from_env(self._prompt_of)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="bucketserve-engine", daemon=True)
            self._thread.start()
        return self

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop admission; let in-flight requests finish for up to timeout_s, then end the
        rest with finish_reason "error"."""
        with self._lock:
            self.admission.close()
            self._wake.notify_all()
        deadline = time.monotonic() + max(0.0, timeout_s)
        while time.monotonic() < deadline and self.num_in_flight():
            time.sleep(0.01)
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, timeout_s))
        # Whatever is left (no thread, or it is stuck in a forward) gets its final here;
        # _final() makes sure nobody gets two.
        self._fail_all("engine shut down before the request finished", kind=ERROR_UNAVAILABLE)

    @property
    def healthy(self) -> bool:
        alive = self._thread is None or self._thread.is_alive() or self._stop
        return alive and self.health.ok

    def retry_in_s(self) -> float:
        """When unhealthy: seconds until the engine tries a canary step to recover."""
        return self.health.retry_in_s()

    # -- the API ---------------------------------------------------------------------------
    def submit(self, req: GenerationRequest, on_output: OnOutput) -> None:
        """Validate and enqueue; raises InvalidRequest or Overloaded, else the request is
        accepted and will get exactly one final output."""
        try:
            live = self.builder.build(req, on_output)  # validate and tokenize, outside the engine lock
        except InvalidRequest:
            self.counters.rejected_invalid += 1
            raise
        with self._lock:
            try:
                if live.request_id in self._live:
                    raise InvalidRequest(f"request_id: {live.request_id!r} is already in flight; use a unique id")
                self.admission.check(live.core)
                if not self.scheduler.add(live.core):
                    raise InvalidRequest(f"prompt: request can never be scheduled: {live.core.reject_reason} "
                                         f"({self.kv_spec.bytes_per_token} KV bytes per token); "
                                         "shorten the prompt or lower max_tokens")
            except InvalidRequest:
                self.counters.rejected_invalid += 1
                raise
            except Overloaded:
                self.counters.rejected_overloaded += 1
                raise
            self._live[live.request_id] = live
            self.admission.enqueued(live.core)
            self.counters.submitted += 1
            self.counters.prompt_tokens += live.core.prompt_len
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
        c, s = self.runner.counters, self.scheduler
        with self._lock:
            return EngineStats(self.healthy, self.admission.accepting, s.num_waiting, s.num_running,
                               self.runner.kv_bytes(), self.health.consecutive_faults, self._last_step,
                               self._last_step_s, EngineCounters(**vars(self.counters)),
                               c.prefill_tokens / c.prefill_slots if c.prefill_slots else 1.0,
                               c.decode_kv_tokens / c.decode_kv_slots if c.decode_kv_slots else 1.0,
                               c.prefill_tokens, c.decode_tokens, self.runner.pieces.stats.shapes,
                               self.runner.pieces.stats.seconds)

    def num_in_flight(self) -> int:
        with self._lock:
            return len(self._live)

    # -- the loop ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._check_drain()
            self.health.try_canary(self.runner.canary)
            with self._lock:
                while not self._stop and not self._cancels and not self.scheduler.has_work():
                    idle_s = 0.5 if self.health.ok else min(0.5, max(0.01, self.health.retry_in_s()))
                    self._wake.wait(timeout=idle_s)
                    if self.health.canary_due() or self.admission.watching_drain:
                        break  # a canary is due; or look for the drain file now and then while idle
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

    def _step(self) -> None:
        """One iteration, as nano-vllm's step(): schedule -> run -> postprocess. The run has up
        to three passes (prefill the newcomers whose whole prompt fits this step's token budget
        into the batch; compute the chunks of longer ones, joining those whose last chunk this
        is; then decode every row of the batch), each followed by its postprocess, so a first
        token goes out as soon as it exists. The batch decodes in every step that prefills."""
        t0 = time.monotonic()
        new = self._schedule(t0)
        if new is None:
            with self._lock:
                if not self._stop and not self._cancels:
                    self._wake.wait(timeout=0.005)  # waiting requests that do not fit yet
            return
        try:
            for produced in self._run(new):
                self._postprocess(produced, time.monotonic())
        except Exception as exc:  # a model step failed: fail this batch only, keep serving
            log.exception("model step failed")
            self._fail_batch(new, f"model step failed: {type(exc).__name__}: {exc}")
        else:
            self.health.step_succeeded()
        with self._lock:
            self.scheduler.set_kv_bytes_in_use(self.runner.kv_bytes())
        self._last_step_s = time.monotonic() - t0

    def _schedule(self, now: float) -> list[tuple[LiveRequest, PrefillChunk]] | None:
        """Apply cancels, ask the scheduler, make the runner follow its output. Returns this
        step's prefill work (whole prompts and chunks), or None when there is nothing to run."""
        with self._lock:
            cancelled = [self._live[rid] for rid in self._cancels if rid in self._live]
            self._cancels = []
            for live in cancelled:  # the scheduler first: this schedule() drops their rows
                self.scheduler.cancel(live.request_id, now)
            out = self.scheduler.schedule(now)
            self._last_step = out.stats
            self.counters.steps += 1
            self.counters.preemptions += len(out.preempted)
            self.runner.drop([r.request_id for r in out.preempted] + out.ended)
            self.runner.shrink_to_fit(out.stats.budget_bytes)
            for live in cancelled:
                self._final(live, FINISH_CANCELLED, now)
            new = [(self._live[c.req.request_id], c) for c in out.chunks]
            for live in (self._live[r.request_id] for r in out.running if r.request_id in self._live):
                if live.scheduled_at is None:  # admitted: it leaves the admission queue
                    live.scheduled_at = now
                    self.admission.dequeued(live.core)
        return None if out.is_empty and not new else new

    def _run(self, new: list[tuple[LiveRequest, PrefillChunk]]):
        """The model passes of a step; yields the requests that got a token after each."""
        if self._mixed:  # one pass: every chunk (a whole prompt is one) and the batch's decode
            got = self.runner.step([(live.seq, c.start, c.stop) for live, c in new])
            if got:
                yield [self._live[s.request_id] for s in got if s.request_id in self._live]
            return
        whole = [live for live, c in new if c.whole]
        if whole:
            self.runner.prefill([live.seq for live in whole])
            yield whole
        for live, c in new:
            if not c.whole and self.runner.prefill_chunk(live.seq, c.start, c.stop):
                yield [live]
        if self.runner.rows:
            decoded = [self._live[s.request_id] for s in self.runner.rows if s.request_id in self._live]
            self.runner.decode()
            yield decoded

    def _postprocess(self, lives: list[LiveRequest], now: float) -> None:
        """After a forward: hand out deltas, finish what stopped, tell the scheduler."""
        with self._lock:
            for live in lives:
                if live.done:
                    continue
                live.got_token(now)
                self.scheduler.on_tokens(live.request_id, 1, now)
                self.counters.output_tokens += 1
                if live.seq.finished:
                    self._final(live, live.seq.finish_reason, now, error=live.seq.error)
                elif live.gen.stream:
                    out = live.delta_output()
                    if out is not None:
                        self._emit(live, out)

    def _fail_batch(self, new: list[tuple[LiveRequest, PrefillChunk]], message: str) -> None:
        self._count_fault()
        victims = [live.request_id for live, _ in new] + [s.request_id for s in self.runner.reset()]
        self._fail(victims, message)

    # -- health and drain ----------------------------------------------------------------------
    def _count_fault(self) -> None:
        self.counters.faults += 1
        self.health.step_failed()

    def _check_drain(self) -> None:
        if self.admission.drain_expired(time.monotonic()) and self.num_in_flight():
            self._fail_all(f"server is shutting down; request not finished within drain_timeout_s="
                           f"{self.config.drain_timeout_s:g}", reset=True, kind=ERROR_UNAVAILABLE)

    def _prompt_of(self, request_id: str) -> str | None:
        live = self._live.get(request_id)
        return live.gen.prompt if live is not None else None

    # -- finals ---------------------------------------------------------------------------------
    def _final(self, live: LiveRequest, reason: str, now: float, error: str | None = None,
               error_kind: str = ERROR_INTERNAL) -> None:
        """The one finished=True output of a request; the scheduler forgets it too (caller
        holds the lock)."""
        if live.done:
            return
        live.done = True
        self._live.pop(live.request_id, None)
        if reason == FINISH_CANCELLED:
            self.scheduler.cancel(live.request_id, now)
            self.counters.cancelled += 1
        else:
            self.scheduler.finish(live.request_id, now)
            if reason == FINISH_ERROR:
                self.counters.errored += 1
            else:
                self.counters.finished += 1
        if live.scheduled_at is None:  # never scheduled: still counted in the admission queue
            self.admission.dequeued(live.core)
        self._emit(live, live.final_output(reason, now, error, error_kind))

    def _emit(self, live: LiveRequest, out) -> None:
        try:
            live.on_output(out)
        except Exception:  # the caller's callback must not take the engine down
            log.exception("on_output callback raised for %s", out.request_id)

    def _fail_all(self, message: str, reset: bool = False, kind: str = ERROR_INTERNAL) -> None:
        if reset:
            self.runner.reset()
        self._fail(None, message, kind)

    def _fail(self, request_ids: list[str] | None, message: str, kind: str = ERROR_INTERNAL) -> None:
        """End these requests (None: every live one) with an error final of this kind."""
        now = time.monotonic()
        with self._lock:
            for rid in list(self._live) if request_ids is None else request_ids:
                live = self._live.get(rid)
                if live is not None:
                    self._final(live, FINISH_ERROR, now, error=message, error_kind=kind)


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


def _check_max_model_len(model, max_model_len: int) -> None:
    text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    max_pos = getattr(text_cfg, "max_position_embeddings", None)
    if max_pos and max_model_len > max_pos:
        raise ValueError(f"max_model_len {max_model_len} is more than this model's "
                         f"max_position_embeddings {max_pos}; lower max_model_len")
