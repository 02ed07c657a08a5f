"""The systems under test: start one, hand out a client for it, stop it.

- OurServer: tritonserver with the BucketServe model under one policy, started through the
  launcher with per-run overrides (a fresh server per policy, so no state carries over),
  driven over gRPC streaming (api="grpc") or its OpenAI-compatible API (api="openai", the
  same client the bench uses for vLLM).
- VllmServer: vLLM's OpenAI API server on CPU, from its own virtual environment
  (see loadtest/vllm-requirements.txt), serving the same model directory.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bucket_scheduler.serving.process_group import stop_group

from .clients import OpenAICompletionsClient, TritonGrpcClient

POLICIES = ("bucket", "static", "continuous", "uellm")


class SystemUnavailable(RuntimeError):
    """The system cannot run here (e.g. vLLM's venv is absent); the bench skips it."""


@dataclass
class OurServer:
    policy: str
    model: str = "bucketserve"  # model name in the repository
    model_dir: str | None = None  # override; None keeps the config's
    overrides: dict = field(default_factory=dict)  # further config.pbtxt parameters
    log_dir: Path | None = None
    api: str = "grpc"  # grpc | openai

    name: str = ""
    handle: object = None

    def __post_init__(self):
        self.name = self.name or self.policy

    @property
    def metrics_url(self) -> str | None:
        return self.handle.metrics_url if self.handle else None

    def start(self, log=print) -> None:
        from bucket_scheduler.serving.launcher import ServerOptions, start_server

        params = {"policy": self.policy, **{k: str(v) for k, v in self.overrides.items()}}
        if self.model_dir:
            params["model_dir"] = str(self.model_dir)
        log_file = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_file = self.log_dir / f"tritonserver-{self.name}.log"
        self.handle = start_server(ServerOptions(models=[self.model], overrides={self.model: params}, http_port=0, grpc_port=0,
                                                 metrics_port=0, log_file=log_file,
                                                 openai_port=0 if self.api == "openai" else None), log=log)

    def client(self) -> TritonGrpcClient | OpenAICompletionsClient:
        if self.api == "openai":
            return OpenAICompletionsClient(self.handle.openai_url, self.model, bucketserve_fields=True)
        return TritonGrpcClient(self.handle.grpc_url, self.model)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()
            self.handle = None


def default_vllm_python() -> Path:
    return Path(".venv-vllm") / "bin" / "python"


@dataclass
class VllmServer:
    model_dir: str
    python: Path = field(default_factory=default_vllm_python)
    port: int = 0
    max_model_len: int = 2048
    kv_cache_gib: float = 2.0
    ready_timeout_s: float = 300.0
    log_dir: Path | None = None
    extra_env: dict = field(default_factory=dict)

    name: str = "vllm"
    served_name: str = "bench-model"
    proc: subprocess.Popen | None = None
    metrics_url: str | None = None  # vLLM exports its own metrics, not ours

    def check(self) -> None:
        if not Path(self.python).exists():
            raise SystemUnavailable(
                f"vLLM venv not found ({self.python}); create it with: python3 -m venv .venv-vllm && "
                ".venv-vllm/bin/pip install -r loadtest/vllm-requirements.txt (see that file)"
            )

    def command(self) -> list[str]:
        return [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", self.served_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--max-model-len", str(self.max_model_len),
            "--dtype", "bfloat16",
        ]  # fmt: skip

    def start(self, log=print) -> None:
        self.check()
        if not self.port:
            from bucket_scheduler.serving.launcher import free_port

            self.port = free_port()
        env = dict(os.environ)
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{self.kv_cache_gib:g}"
        env.update(self.extra_env)
        out = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / "vllm.log", "ab")
        log(f"[bench] starting vLLM on port {self.port} (takes 1-2 minutes on CPU)")
        self.proc = subprocess.Popen(self.command(), env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        if out is not subprocess.DEVNULL:
            out.close()
        start = time.monotonic()
        while time.monotonic() - start < self.ready_timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with code {self.proc.returncode} during start-up (see vllm.log)")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        log(f"[bench] vLLM ready in {time.monotonic() - start:.0f}s")
                        return
            except OSError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"vLLM not ready after {self.ready_timeout_s:.0f}s")

    def client(self) -> OpenAICompletionsClient:
        return OpenAICompletionsClient(f"http://127.0.0.1:{self.port}", self.served_name)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, 30)
            self.proc = None


def vllm_version(python: Path) -> str | None:
    try:
        out = subprocess.run([str(python), "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True, timeout=120)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None
