"""Whether the engine takes a request now: queue caps with offline shed first, shutdown and
drain, and health (failed model steps in a row, the canary that ends it). Plain state: the
engine calls these under its lock."""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Callable

from ..core.request import Request
from .api import EngineConfig, Overloaded

log = logging.getLogger("bucketserve.engine")

MAX_CONSECUTIVE_FAULTS = 3  # past this many failed model steps in a row, the engine is unhealthy
MAX_BACKOFF_FACTOR = 16  # canary retries back off from fault_backoff_s up to 16x it


class Admission:
    """Queue caps. Offline requests see lower caps (offline_queue_fraction of each), so under
    overload they are shed first and online keeps the rest of the queue."""

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.accepting = True
        self.queued_requests = 0  # accepted, not yet scheduled
        self.queued_tokens = 0
        self.drain_deadline: float | None = None
        self._next_drain_check = 0.0

    def close(self) -> None:
        self.accepting = False

    @property
    def watching_drain(self) -> bool:
        """Still looking for the drain file (the idle loop wakes now and then to look)."""
        return bool(self.cfg.drain_file) and self.drain_deadline is None

    def drain_expired(self, now: float) -> bool:
        """Shutdown announced through config.drain_file (the launcher creates it just before
        SIGTERM: Triton waits for decoupled requests before it calls finalize()). Once it appears
        admission stops; True from drain_timeout_s later on, when what is still in flight is to
        be failed, so that each request gets its final before Triton's exit timeout runs out."""
        cfg = self.cfg
        if not cfg.drain_file:
            return False
        if self.drain_deadline is None:
            if now < self._next_drain_check:
                return False
            self._next_drain_check = now + 0.1
            if not os.path.exists(cfg.drain_file):
                return False
            log.warning("drain file found: no new requests; in-flight ones get %.1fs", cfg.drain_timeout_s)
            self.accepting = False
            self.drain_deadline = now + cfg.drain_timeout_s
        return now >= self.drain_deadline

    def check(self, req: Request) -> None:
        """Raise Overloaded when `req` may not join the queue now."""
        cfg = self.cfg
        if not self.accepting:
            raise Overloaded("engine is shutting down; not accepting requests")
        share = 1.0 if req.is_online else cfg.offline_queue_fraction
        max_requests = math.ceil(cfg.max_queue_requests * share)
        max_tokens = math.ceil(cfg.max_queue_tokens * share)
        who = "" if req.is_online else f" for offline requests ({cfg.offline_queue_fraction:g} of the caps)"
        if self.queued_requests >= max_requests:
            raise Overloaded(
                f"queue full: {self.queued_requests} requests waiting, the limit{who} is {max_requests} "
                f"(max_queue_requests={cfg.max_queue_requests}); retry later"
            )
        if self.queued_tokens + req.prompt_len > max_tokens:
            raise Overloaded(
                f"queue full: {self.queued_tokens} prompt tokens waiting, the limit{who} is {max_tokens} "
                f"(max_queue_tokens={cfg.max_queue_tokens}); retry later"
            )

    def enqueued(self, req: Request) -> None:
        self.queued_requests += 1
        self.queued_tokens += req.prompt_len

    def dequeued(self, req: Request) -> None:
        """Scheduled for the first time, or ended while still waiting."""
        self.queued_requests -= 1
        self.queued_tokens -= req.prompt_len


class Health:
    """Failed model steps in a row, for reasons that are no request's input. Past
    MAX_CONSECUTIVE_FAULTS the engine is unhealthy (the Triton model refuses requests) until a
    canary step succeeds; canaries back off from fault_backoff_s, doubling up to 16x."""

    def __init__(self, fault_backoff_s: float):
        self.base_backoff_s = fault_backoff_s
        self.backoff_s = fault_backoff_s
        self.consecutive_faults = 0
        self.canary_at = 0.0  # when unhealthy: the next canary's time

    @property
    def ok(self) -> bool:
        return self.consecutive_faults < MAX_CONSECUTIVE_FAULTS

    def retry_in_s(self) -> float:
        return max(0.0, self.canary_at - time.monotonic())

    def canary_due(self) -> bool:
        return not self.ok and time.monotonic() >= self.canary_at

    def step_failed(self) -> None:
        self.consecutive_faults += 1
        if self.consecutive_faults == MAX_CONSECUTIVE_FAULTS:
            self.backoff_s = self.base_backoff_s
            self.canary_at = time.monotonic() + self.backoff_s
            log.error("%d model steps failed in a row: unhealthy; canary step in %.1fs",
                      self.consecutive_faults, self.backoff_s)

    def step_succeeded(self) -> None:
        self.consecutive_faults = 0

    def try_canary(self, canary: Callable[[], None]) -> None:
        """When due, run a canary step: healthy again if it passes, else back off further."""
        if not self.canary_due():
            return
        try:
            canary()
        except Exception as exc:  # noqa: BLE001
            self.backoff_s = min(self.backoff_s * 2, self.base_backoff_s * MAX_BACKOFF_FACTOR)
            self.canary_at = time.monotonic() + self.backoff_s
            log.error("canary step failed (%s: %s); next try in %.1fs", type(exc).__name__, exc, self.backoff_s)
            return
        log.warning("canary step succeeded: healthy again, accepting requests")
        self.consecutive_faults = 0
