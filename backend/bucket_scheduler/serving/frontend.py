"""Start, watch and stop the OpenAI-compatible front end (serving/openai) beside tritonserver.

It is a child process of the launcher, started once Triton is ready and stopped after Triton
has drained, so streams in flight during a shutdown still get their last tokens (and new
requests get 503 from the draining engine rather than a refused connection).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .process_group import stop_group
from .repository import read_parameters

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FrontendError(RuntimeError):
    pass


@dataclass
class Frontend:
    process: subprocess.Popen
    host: str
    port: int

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def healthy(self) -> bool:
        try:
            with _DIRECT.open(f"{self.url}/health", timeout=2.0) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM (uvicorn closes its connections), then SIGKILL past timeout_s."""
        return stop_group(self.process, timeout_s)


def tokenizer_dirs(source: Path, models: list[str], overrides: dict[str, dict[str, str]]) -> dict[str, tuple[str, bool]]:
    """model -> (its local model directory, trust_remote_code): where chat templates come from.
    Empty when the engine extra is missing (chat then answers that no template is available)."""
    try:
        from bucket_scheduler.runtime.models import resolve_model
    except ImportError:
        return {}
    out = {}
    for name in models:
        config = source / name / "config.pbtxt"
        params = read_parameters(config.read_text()) if config.is_file() else {}
        params.update(overrides.get(name) or {})
        try:
            path = resolve_model(params.get("model_dir") or None)
        except Exception:  # noqa: BLE001 - the model itself reports a bad model_dir when it loads
            continue
        out[name] = (str(path), params.get("trust_remote_code", "false").strip().lower() == "true")
    return out


def frontend_command(grpc_url: str, host: str, port: int, models: list[str], dirs: dict[str, tuple[str, bool]],
                     max_body_bytes: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "bucket_scheduler.serving.openai.server", f"--grpc-url={grpc_url}", f"--host={host}", f"--port={port}",
           f"--parent-pid={os.getpid()}"]
    for name in models:
        path, trust = dirs.get(name, ("", False))
        cmd.append(f"--model={name}={path}" if path else f"--model={name}")
        if trust:
            cmd.append(f"--trust-remote-code={name}")
    if max_body_bytes is not None:
        cmd.append(f"--max-body-bytes={max_body_bytes}")
    return cmd


def start_frontend(cmd: list[str], host: str, port: int, log_path: Path | None, ready_timeout_s: float = 120.0,
                   env: dict[str, str] | None = None) -> Frontend:
    """Run the front end and wait until its /health answers 200 (Triton and the models ready)."""
    stdout = open(log_path, "ab") if log_path else None
    try:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT if stdout else None, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    finally:
        if stdout is not None:
            stdout.close()
    frontend = Frontend(proc, host, port)
    deadline = time.monotonic() + ready_timeout_s
    while not frontend.healthy():
        if not frontend.alive():
            raise FrontendError(f"the OpenAI front end exited with code {proc.returncode} before it was ready "
                                f"(port {port} in use? --openai-port picks another, 0 turns it off)")
        if time.monotonic() > deadline:
            frontend.stop(5)
            raise FrontendError(f"the OpenAI front end was not ready after {ready_timeout_s:.0f}s")
        time.sleep(0.2)
    return frontend
