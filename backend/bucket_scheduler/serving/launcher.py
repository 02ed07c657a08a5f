"""Start, watch and stop a tritonserver that hosts BucketServe models.

    handle = start_server(ServerOptions(models=["bucketserve_tiny"], http_port=0))   # 0: a free port
    ... handle.http_url, handle.grpc_url, handle.metrics_url ...
    handle.stop()

The server runs in its own session (process group) so that a stop can reach the stubs too;
stop() sends SIGTERM, waits for Triton's exit timeout, then kills the whole group.
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .frontend import Frontend, FrontendError, frontend_command, start_frontend, tokenizer_dirs
from .process_group import stop_group
from .repository import default_repository, prepare_repository, read_parameters
from .tritonserver import TritonInstall, default_cache_dir, find_tritonserver

SHM_GLOB = "/dev/shm/triton_python_backend_shm_region_*"
DEFAULT_MODELS = ("bucketserve",)
# Of Triton's exit timeout, what the models' finalize() keeps for sending the last finals and
# unloading after the drain; the rest (drain_timeout_s) is for in-flight requests to finish.
SHUTDOWN_MARGIN_S = 5.0


DRAIN_FILE = "draining"  # in the run dir; created just before SIGTERM (see ServerHandle.terminate)


def drain_timeout_for(exit_timeout_s: float) -> float:
    return max(0.0, exit_timeout_s - SHUTDOWN_MARGIN_S)


class ServerError(RuntimeError):
    pass


class StartInterrupted(ServerError):
    """A stop was asked for (SIGTERM / SIGINT) while the server was still starting."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _has_gpu() -> bool:
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the pynvml shim warns that it is deprecated
            import pynvml
        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return False


def clean_stale_shm() -> list[str]:
    """Remove python-backend shared-memory regions that no running process maps.

    A crashed server leaves them behind; a region some live server (or stub) maps is kept."""
    regions = glob.glob(SHM_GLOB)
    if not regions:
        return []
    in_use: set[str] = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as f:
                for line in f:
                    if "triton_python_backend_shm_region_" in line:
                        in_use.add(line.split()[-1].replace(" (deleted)", ""))
        except OSError:
            continue
    removed = []
    for region in regions:
        if region not in in_use:
            try:
                os.unlink(region)
                removed.append(region)
            except OSError:
                pass
    return removed


def prepare_model_dirs(source: Path, models: list[str], overrides: dict[str, dict[str, str]], log=print) -> None:
    """Convert or build the weights each model names before the server starts, so the stub only
    loads them (a conversion inside the stub would count against the model's load time)."""
    try:
        from bucket_scheduler.runtime.models import resolve_model
    except ImportError as exc:  # the engine extra is not installed
        log(f"[bucketserve] skipping model preparation ({exc})")
        return
    for name in models:
        params = read_parameters((source / name / "config.pbtxt").read_text())
        params.update(overrides.get(name) or {})
        model_dir = params.get("model_dir") or None
        log(f"[bucketserve] preparing model {name} ({model_dir or 'default SmolLM2'}); the first run converts, later runs reuse the cache")
        path = resolve_model(model_dir)
        log(f"[bucketserve] model {name}: {path}")


@dataclass
class ServerHandle:
    process: subprocess.Popen
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    run_dir: Path
    log_path: Path | None
    models: list[str]
    exit_timeout_s: int
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)
    http_host: str | None = None  # where Triton's HTTP port binds (loopback unless exposed on purpose)
    frontend: Frontend | None = None  # the OpenAI-compatible API, when on

    @property
    def http_url(self) -> str:
        host = self.http_host if self.http_host not in (None, "0.0.0.0", "") else self._client_host
        return f"http://{host}:{self.http_port}"

    @property
    def openai_url(self) -> str | None:
        return self.frontend.url if self.frontend else None

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def ready(self) -> bool:
        return _http_ok(f"{self.http_url}/v2/health/ready")

    def log_tail(self, n: int = 60) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def terminate(self) -> None:
        # Tell the models first: Triton itself waits for decoupled requests before it calls
        # finalize(), so without this a long generation outlives the exit timeout unanswered.
        try:
            (self.run_dir / DRAIN_FILE).touch()
        except OSError:
            pass
        if self.alive():
            try:
                self.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill_group(self) -> None:
        """SIGKILL the server's whole process group at once, no drain (a crash, as the cluster tests it)."""
        stop_group(self.process, 0, terminate_group=False)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM, wait for the exit timeout (+ grace), then kill the whole process group.
        Returns the server's exit code (None if it had to be killed)."""
        self.terminate()
        return self.close((self.exit_timeout_s + 10) if timeout_s is None else timeout_s)

    def close(self, timeout_s: float = 0) -> int | None:
        """All teardown after a terminate(): wait up to timeout_s for the server, kill its group
        (stubs that outlived it too), then stop the front end (after Triton: streams in flight
        during its drain still reach their clients) and remove the temporary run dir."""
        code = stop_group(self.process, timeout_s, terminate_group=False)
        if self.frontend is not None:
            self.frontend.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return code


# Health checks go straight to the local server, never through an http_proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with _DIRECT.open(url, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def build_command(
    install: TritonInstall,
    repo: Path,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    exit_timeout_s: int,
    gpu_metrics: bool,
    log_verbose: int = 0,
    extra_args: list[str] | None = None,
    http_host: str | None = None,
) -> list[str]:
    cmd = [
        str(install.binary),
        f"--model-repository={repo}",
        f"--http-address={http_host or host}",
        f"--grpc-address={host}",
        f"--metrics-address={host}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        f"--allow-gpu-metrics={'true' if gpu_metrics else 'false'}",
        f"--exit-timeout-secs={exit_timeout_s}",
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--disable-auto-complete-config",
        f"--log-verbose={log_verbose}",
    ]
    if install.backend_dir is not None:
        cmd.append(f"--backend-directory={install.backend_dir}")
    return cmd + list(extra_args or [])


@dataclass
class ServerOptions:
    """What start_server starts. Ports given as 0 are picked free by the OS.

    Triton's HTTP port binds 127.0.0.1 whatever `host` is, unless expose_http: Triton 2.51's HTTP
    front end crashes on request bodies of 4 MiB or more, so an exposed server offers the OpenAI
    port (bodies capped at max_body_bytes) and gRPC instead. Output goes to `log_file` (default:
    run_dir/tritonserver.log) unless inherit_output, in which case it shares this terminal."""

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> config.pbtxt parameters
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    openai_port: int | None = None  # None: no OpenAI-compatible front end; 0: on a free port
    model_repository: str | Path | None = None
    run_dir: str | Path | None = None  # None: a temporary one, removed at stop
    exit_timeout_s: int = 30
    ready_timeout_s: float = 600.0
    log_file: str | Path | None = None
    inherit_output: bool = False
    instance_kind: str | None = None
    prepare_models: bool = True
    extra_args: list[str] | None = None
    expose_http: bool = False
    max_body_bytes: int | None = None


def start_server(options: ServerOptions | None = None, stop_event: threading.Event | None = None, log=print,
                 **fields) -> ServerHandle:
    """Start tritonserver with the chosen models and wait until it is ready; then, unless
    openai_port is None, the OpenAI-compatible front end. `fields` are ServerOptions fields, a
    shorthand for start_server(ServerOptions(...)).
    Raises ServerError (with the log's tail) if the server exits or is not ready in time."""
    o = options or ServerOptions(**fields)
    models = list(o.models)
    overrides = {k: dict(v) for k, v in (o.overrides or {}).items()}
    source = Path(o.model_repository) if o.model_repository else default_repository()
    if source is None:
        raise ServerError("no model repository found; pass --model-repository")
    stop_event = stop_event or threading.Event()
    tmp = None
    run_dir = o.run_dir
    if run_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bucketserve-run-")
        run_dir = tmp.name
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    host, exit_timeout_s = o.host, o.exit_timeout_s
    http_port, grpc_port, metrics_port = (p or free_port(host) for p in (o.http_port, o.grpc_port, o.metrics_port))

    drain_file = run_dir.resolve() / DRAIN_FILE
    drain_file.unlink(missing_ok=True)
    for name in models:  # in-flight requests must be answered before Triton's exit timeout aborts
        config = source / name / "config.pbtxt"
        params = read_parameters(config.read_text()) if config.is_file() else {}
        if "drain_timeout_s" not in params:
            overrides.setdefault(name, {}).setdefault("drain_timeout_s", f"{drain_timeout_for(exit_timeout_s):g}")
        overrides.setdefault(name, {}).setdefault("drain_file", str(drain_file))
    if o.prepare_models:
        prepare_model_dirs(source, models, overrides, log=log)
    repo = prepare_repository(source, run_dir, models, overrides, instance_kind=o.instance_kind)
    install = find_tritonserver(default_cache_dir())
    removed = clean_stale_shm()
    if removed:
        log(f"[bucketserve] removed {len(removed)} stale shared-memory region(s) of crashed servers")
    http_host = host if o.expose_http else "127.0.0.1"
    cmd = build_command(install, repo, host, http_port, grpc_port, metrics_port, exit_timeout_s, _has_gpu(), extra_args=o.extra_args,
                        http_host=http_host)
    env = dict(os.environ)
    env.update(install.env)
    env.setdefault("PYTHONUNBUFFERED", "1")

    log_path = None
    if o.inherit_output:
        stdout = None
    else:
        log_path = Path(o.log_file) if o.log_file else run_dir / "tritonserver.log"
        stdout = open(log_path, "ab")
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        if stdout is not None:
            stdout.close()
    handle = ServerHandle(proc, host, http_port, grpc_port, metrics_port, run_dir, log_path, models, exit_timeout_s, tmp,
                          http_host=http_host)
    log(f"[bucketserve] tritonserver ({install.source}) pid {proc.pid}: models {', '.join(models)}; "
        f"http {handle.http_url}, grpc {handle.grpc_url}, metrics {handle.metrics_url}")
    try:
        wait_ready(handle, o.ready_timeout_s, stop_event, log=log)
        if o.openai_port is not None:
            port = o.openai_port or free_port(host)
            cmd = frontend_command(handle.grpc_url, host, port, models, tokenizer_dirs(source, models, overrides), o.max_body_bytes)
            handle.frontend = start_frontend(cmd, host, port, log_path)
            log(f"[bucketserve] OpenAI-compatible API on {handle.openai_url}/v1 (models: {', '.join(models)})")
    except FrontendError as exc:
        handle.stop(timeout_s=10)
        raise ServerError(f"{exc}\n{handle.log_tail()}") from None
    except BaseException:
        handle.stop(timeout_s=10)
        raise
    return handle


def wait_ready(handle: ServerHandle, timeout_s: float, stop_event: threading.Event, log=print) -> None:
    start = time.monotonic()
    last_note = start
    while True:
        if stop_event.is_set():
            raise StartInterrupted("stopped while starting")
        if not handle.alive():
            raise ServerError(f"tritonserver exited with code {handle.process.returncode} before it was ready\n{handle.log_tail()}")
        if handle.ready():
            log(f"[bucketserve] ready in {time.monotonic() - start:.1f}s")
            return
        now = time.monotonic()
        if now - start > timeout_s:
            raise ServerError(f"tritonserver not ready after {timeout_s:.0f}s\n{handle.log_tail()}")
        if now - last_note >= 5:
            log(f"[bucketserve] waiting for the models to load ({now - start:.0f}s)")
            last_note = now
        time.sleep(0.2)


def serve_forever(handle: ServerHandle, stop_event: threading.Event, log=print) -> int:
    """Block until the server exits. Once stop_event is set (by a signal handler), SIGTERM the
    server and give it its exit timeout; past that, kill the whole process group."""
    stop_at = None
    code = None
    try:
        while code is None:
            code = handle.wait(0.2)
            if code is not None:
                break
            if stop_event.is_set() and stop_at is None:
                log(f"[bucketserve] stopping the server (up to {handle.exit_timeout_s}s for requests in flight)")
                stop_at = time.monotonic()
                handle.terminate()
            if stop_at is not None and time.monotonic() - stop_at > handle.exit_timeout_s + 10:
                log("[bucketserve] server outlived its exit timeout; killing its process group")
                code = 1
    finally:
        handle.close()
    log(f"[bucketserve] server exited with code {code}")
    return code


def serve(options: ServerOptions, log=print) -> int:
    """start_server + serve_forever with SIGTERM / SIGINT handled from the first moment: a
    signal during start-up stops the starting server; after, it is forwarded once."""
    stop_event = threading.Event()

    def on_signal(signum, _frame):
        if not stop_event.is_set():
            log(f"[bucketserve] {signal.Signals(signum).name} received")
        stop_event.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            handle = start_server(options, stop_event=stop_event, log=log)
        except StartInterrupted:
            log("[bucketserve] stopped before the server was ready")
            return 0
        log(f"[bucketserve] serving {', '.join(handle.models)}; try: bucketserve-client generate \"Hello\" --stream "
            f"--url {handle.grpc_url}  (Ctrl-C stops)")
        if handle.openai_url:
            log(f"[bucketserve] or: curl {handle.openai_url}/v1/chat/completions -d '{{\"model\": \"{handle.models[0]}\", "
                f"\"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'")
        return serve_forever(handle, stop_event, log=log)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
