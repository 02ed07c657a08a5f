"""The OpenAI front end's process leaves by itself when the launcher that started it is killed
outright (it runs in its own session, so nothing else would stop it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

CHILD = ("import sys, time; from bucket_scheduler.serving.openai.server import watch_parent; "
         "watch_parent(int(sys.argv[1]), every_s=0.1); print('watching', flush=True); time.sleep(60)")
# Like the launcher: the front end in its own session, told the launcher's pid.
LAUNCHER = ("import os, subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', sys.argv[1], str(os.getpid())], start_new_session=True); "
            "print(p.pid, flush=True); time.sleep(60)")


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_front_end_exits_when_its_launcher_is_killed():
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, CHILD], stdout=subprocess.PIPE, text=True)
    child = int(launcher.stdout.readline())
    try:
        assert launcher.stdout.readline().strip() == "watching"
        time.sleep(0.3)
        assert not _gone(child)  # alive while its launcher is
        launcher.kill()
        launcher.wait(10)
        deadline = time.monotonic() + 10
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(child), "the front end outlived its launcher"
    finally:
        if not _gone(child):
            os.kill(child, signal.SIGKILL)
