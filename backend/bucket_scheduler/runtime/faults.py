"""Test-only fault injection, off unless the environment variable FAULT_ENV is "1": a model step
whose batch holds a prompt containing FAULT_MARKER raises, and while the file named by
FAULT_FILE_ENV exists every model step (the canary too) raises (docs/reliability.md)."""

from __future__ import annotations

import logging
import os
from typing import Callable

log = logging.getLogger("bucketserve.engine")

FAULT_ENV = "BUCKETSERVE_TEST_FAULTS"
FAULT_FILE_ENV = "BUCKETSERVE_TEST_FAULT_FILE"
FAULT_MARKER = "<<bucketserve-injected-fault>>"

FaultHook = Callable[[str, list], None]


def fault_hook_from_env(prompt_of: Callable[[str], str | None]) -> FaultHook | None:
    """The runner's fault hook when FAULT_ENV=1, else None. prompt_of(request_id) -> its prompt."""
    if os.environ.get(FAULT_ENV) != "1":
        return None
    log.warning("%s=1: test fault injection is on", FAULT_ENV)
    fault_file = os.environ.get(FAULT_FILE_ENV, "")

    def hook(phase: str, seqs: list) -> None:
        if fault_file and os.path.exists(fault_file):
            raise RuntimeError(f"injected fault in {phase} (test hook {FAULT_FILE_ENV})")
        if any(FAULT_MARKER in (prompt_of(s.request_id) or "") for s in seqs):
            raise RuntimeError(f"injected fault in {phase} (test hook {FAULT_ENV})")

    return hook
