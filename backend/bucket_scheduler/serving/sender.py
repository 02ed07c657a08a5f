"""The one thread that talks back to Triton.

Everything that reaches the server from the model after execute() returns goes through here:
every response_sender.send(), every is_cancelled() check, every metric update and every log
line. Other threads only put items on the queue:

    execute()     -> register(request_id, response_sender, request)   before engine.submit()
                  -> fail(request_id, code, message, outcome)          validation / admission errors
    engine thread -> on_output(RequestOutput)                          deltas and the final

Invariants:
  * exactly one FINAL per registered request (success, error, cancel or shutdown): a per-request
    entry is dropped the moment its FINAL is sent, later items for it are ignored;
  * cancellation flows one way: the sender sees response_sender.is_cancelled(), asks
    engine.cancel(id) once, the engine answers with a final "cancelled" output, and the sender
    sends the CANCELLED error final;
  * no pb_utils.Metric is touched by any other thread (two threads updating one Metric can
    crash the server).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from bucket_scheduler.runtime.api import (ERROR_INTERNAL, ERROR_UNAVAILABLE, FINISH_CANCELLED, FINISH_ERROR, GenerationRequest,
                                          RequestOutput)

_STOP = object()
# The engine's error kind -> the Triton error code its final carries.
ERROR_CODES = {ERROR_UNAVAILABLE: "UNAVAILABLE", ERROR_INTERNAL: "INTERNAL"}


@dataclass
class _Entry:
    request_id: str
    response_sender: Any
    stream: bool
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    parts: list[str] = field(default_factory=list)  # text not sent yet (non-streaming: all of it)
    cancel_requested: bool = False


class Sender:
    def __init__(
        self,
        pb_utils: Any,
        engine: Any,
        metrics: Any = None,
        logger: Any = None,
        cancel_poll_s: float = 0.05,
        cancel_checks_per_poll: int = 8,
        max_batch: int = 256,
        stats_every_s: float = 0.25,
        stats_fn: Callable[[], Any] | None = None,
    ):
        self._pb = pb_utils
        self._engine = engine
        self._metrics = metrics
        self._log = logger
        self._cancel_poll_s = cancel_poll_s
        self._cancel_checks_per_poll = max(1, cancel_checks_per_poll)
        self._cancel_cursor = 0
        self._max_batch = max(1, max_batch)
        self._behind: dict[str, _Entry] = {}  # streams with deltas queued in this batch
        self._stats_every_s = stats_every_s
        self._stats_fn = stats_fn
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._live: dict[str, _Entry] = {}
        self._thread = threading.Thread(target=self._run, name="bucketserve-sender", daemon=True)
        self._error_codes = pb_utils.TritonError
        self.sent_finals = 0  # read by tests; written only by the sender thread

    # ---- called from other threads: queue puts only ----

    def start(self) -> None:
        self._thread.start()

    def register(self, response_sender: Any, request: GenerationRequest) -> None:
        entry = _Entry(
            request_id=request.request_id,
            response_sender=response_sender,
            stream=request.stream,
            slo_ttft_ms=request.slo_ttft_ms if request.req_class == "online" else None,
            slo_tpot_ms=request.slo_tpot_ms if request.req_class == "online" else None,
        )
        self._q.put(("register", request.request_id, entry))

    def fail(self, request_id: str, code: str, message: str, outcome: str, response_sender: Any = None) -> None:
        """Answer with an error FINAL. `response_sender` for requests never registered."""
        self._q.put(("fail", request_id, code, message, outcome, response_sender))

    def on_output(self, output: RequestOutput) -> None:
        self._q.put(("output", output))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Answer everything still pending with an UNAVAILABLE final, then end the thread."""
        self._q.put((_STOP,))
        self._thread.join(timeout_s)

    # ---- the sender thread ----

    def _run(self) -> None:
        next_cancel_check = next_stats = time.monotonic()
        while True:
            timeout = max(0.0, min(next_cancel_check, next_stats) - time.monotonic())
            try:
                batch = [self._q.get(timeout=timeout)]
            except queue.Empty:
                batch = []
            # Whatever else is queued joins this batch: a stream that fell behind gets its
            # queued deltas in one response instead of one IPC round trip per token.
            while batch and len(batch) < self._max_batch:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            for item in batch:
                if item[0] is _STOP:
                    self._flush_behind()
                    self._drain_and_close()
                    return
                self._guarded(self._handle, item)
            self._flush_behind()
            now = time.monotonic()
            if now >= next_cancel_check:
                self._guarded(self._check_cancelled)
                next_cancel_check = now + self._cancel_poll_s
            if now >= next_stats:
                self._guarded(self._update_stats)
                next_stats = now + self._stats_every_s

    def _flush_behind(self) -> None:
        behind, self._behind = self._behind, {}
        for rid, entry in behind.items():
            if rid in self._live and entry.parts:
                text = "".join(entry.parts)
                entry.parts.clear()
                self._guarded(self._send, entry, self._response(text_output=text), False)

    def _guarded(self, fn, *args, **kwargs) -> None:
        # The thread must survive anything: a dead sender leaves every client waiting forever.
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            self._warn(f"sender: {type(exc).__name__}: {exc}")

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "register":
            _, rid, entry = item
            self._live[rid] = entry
            self._set_inflight()
        elif kind == "output":
            self._on_output(item[1])
        elif kind == "fail":
            _, rid, code, message, outcome, response_sender = item
            entry = self._live.pop(rid, None)
            sender = entry.response_sender if entry is not None else response_sender
            if sender is None:
                return  # already answered
            self._send_error(sender, code, message)
            if self._metrics:
                self._metrics.request_done(outcome)
            self._set_inflight()

    def _on_output(self, out: RequestOutput) -> None:
        entry = self._live.get(out.request_id)
        if entry is None:
            return  # already answered (cancel raced with the end, or a shutdown final)
        text = out.delta_text or ""  # the engine puts the prompt in front when asked to
        if not out.finished:
            if text:
                entry.parts.append(text)
                if entry.stream:
                    self._behind[out.request_id] = entry  # sent at the end of this batch
            return

        # Build the final while the entry is still held, then drop the entry, then send: if
        # building raises, the client still gets a minimal error final, and a metric or log
        # failure after the send cannot take the final away.
        try:
            response, code, message, outcome = self._final_for(entry, out, text)
        except Exception as exc:  # noqa: BLE001
            self._warn(f"building the final of {out.request_id} failed: {type(exc).__name__}: {exc}")
            response, code, outcome = None, "INTERNAL", "error"
            message = f"the server could not build the final response: {type(exc).__name__}"
        del self._live[out.request_id]
        if response is not None:
            if not self._send(entry, response, final=True):
                self._send_error(entry.response_sender, "INTERNAL", "the server could not send the final response",
                                 count=False)
                outcome = "error"
        else:
            self._send_error(entry.response_sender, code, message)
        if self._metrics:
            self._guarded(
                self._metrics.request_done,
                outcome,
                prompt_tokens=out.num_input_tokens if outcome != "error" else 0,
                output_tokens=out.num_output_tokens if outcome != "error" else 0,
                timing=out.metrics,
                slo_ttft_ms=entry.slo_ttft_ms,
                slo_tpot_ms=entry.slo_tpot_ms,
            )
        # After the counters: whoever sees no request in flight sees their tokens counted too.
        self._guarded(self._set_inflight)

    def _final_for(self, entry: _Entry, out: RequestOutput, text: str) -> tuple[Any, str, str, str]:
        """(success response or None, error code, error message, outcome) of a finished request."""
        if out.finish_reason == FINISH_CANCELLED:
            return None, "CANCELLED", "request cancelled", "cancelled"
        if out.finish_reason == FINISH_ERROR:
            message = out.error_message or "the engine failed this request"
            return None, ERROR_CODES.get(out.error_kind, "INTERNAL"), message, "error"
        text = "".join(entry.parts) + text  # streams: deltas queued with the final go out with it
        response = self._response(
            text_output=text,
            finish_reason=out.finish_reason or "stop",
            num_input_tokens=out.num_input_tokens,
            num_output_tokens=out.num_output_tokens,
        )
        return response, "", "", "success"

    def _check_cancelled(self) -> None:
        # is_cancelled() is a round trip to the server: with a deep queue, check a bounded
        # slice per poll (round robin) so that sends are never starved by the checks.
        ids = list(self._live)
        if not ids:
            return
        start = self._cancel_cursor % len(ids)
        count = min(len(ids), self._cancel_checks_per_poll)
        self._cancel_cursor = start + count
        for k in range(count):
            rid = ids[(start + k) % len(ids)]
            entry = self._live[rid]
            if entry.cancel_requested:
                continue
            try:
                cancelled = entry.response_sender.is_cancelled()
            except Exception:  # noqa: BLE001 - a sender that can't answer is a gone client
                cancelled = True
            if cancelled:
                # False: the engine does not hold it (yet, or any more): ask again next poll
                # rather than let a request submitted a moment later run to the end.
                entry.cancel_requested = self._engine.cancel(rid) is not False

    def _update_stats(self) -> None:
        if not self._metrics:
            return
        stats = self._stats_fn() if self._stats_fn else None
        if stats is not None:
            self._metrics.update_engine(stats)

    def _drain_and_close(self) -> None:
        # Whatever is still queued (late finals from a shut-down engine) is handled first.
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item[0] is not _STOP:
                self._guarded(self._handle, item)
        for rid, entry in list(self._live.items()):
            del self._live[rid]
            self._guarded(self._send_error, entry.response_sender, "UNAVAILABLE", "server is shutting down; request not completed")
            if self._metrics:
                self._guarded(self._metrics.request_done, "error")
        self._guarded(self._set_inflight)
        self._guarded(self._update_stats)

    # ---- Triton I/O ----

    def _response(self, text_output: str, finish_reason: str | None = None, num_input_tokens: int | None = None,
                  num_output_tokens: int | None = None) -> Any:
        pb = self._pb
        tensors = [pb.Tensor("text_output", np.array([text_output.encode("utf-8")], dtype=np.object_))]
        if finish_reason is not None:
            tensors.append(pb.Tensor("finish_reason", np.array([finish_reason.encode()], dtype=np.object_)))
        if num_input_tokens is not None:
            tensors.append(pb.Tensor("num_input_tokens", np.array([num_input_tokens], dtype=np.int32)))
        if num_output_tokens is not None:
            tensors.append(pb.Tensor("num_output_tokens", np.array([num_output_tokens], dtype=np.int32)))
        return pb.InferenceResponse(output_tensors=tensors)

    def _send(self, entry: _Entry, response: Any, final: bool) -> bool:
        """False when send() raised (the caller of a final then falls back to an error final)."""
        flags = self._pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
        if final:
            self.sent_finals += 1
        try:
            entry.response_sender.send(response, flags=flags)
            return True
        except Exception as exc:  # noqa: BLE001 - the client went away; the engine must drop it
            if not final and not entry.cancel_requested:
                entry.cancel_requested = True
                self._guarded(self._engine.cancel, entry.request_id)
            self._warn(f"send failed: {exc}")
            return False

    def _send_error(self, response_sender: Any, code: str, message: str, count: bool = True) -> None:
        if count:
            self.sent_finals += 1
        try:
            codes = self._error_codes
            err = self._pb.TritonError(message, getattr(codes, code, codes.UNAVAILABLE))
            response_sender.send(self._pb.InferenceResponse(output_tensors=[], error=err), flags=self._pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # noqa: BLE001
            self._warn(f"error final failed: {exc}")

    def _set_inflight(self) -> None:
        if self._metrics:
            self._metrics.set_inflight(len(self._live))

    def _warn(self, message: str) -> None:
        if self._log is not None:
            try:
                self._log.log_warn(message)
            except Exception:  # noqa: BLE001
                pass
