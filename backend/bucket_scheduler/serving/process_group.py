"""Stopping a child started in its own process group (start_new_session=True).

The one place that signals a group: tritonserver with its stubs, the OpenAI front end and a
benchmark's vLLM all stop the same way, and members that outlive their leader go with it."""

from __future__ import annotations

import os
import signal
import subprocess


def signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(process: subprocess.Popen, timeout_s: float, terminate_group: bool = True) -> int | None:
    """SIGTERM the group (unless the caller already asked the leader to stop), wait timeout_s for
    the leader, then SIGKILL whatever is left of the group. Returns the leader's exit code, None
    when it had to be killed."""
    if terminate_group and process.poll() is None:
        signal_group(process, signal.SIGTERM)
    try:
        code = process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        code = None
    signal_group(process, signal.SIGKILL)
    if code is None:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            pass
    return code
