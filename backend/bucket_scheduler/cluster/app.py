"""The Serve application: N Triton replicas, the request router, the OpenAI ingress.

    # from a Serve config (serve run / serve deploy / KubeRay RayService): deploy/serve.yaml
    import_path: bucket_scheduler.cluster.app:build_app
    args: {replicas: 2, router: bucket, models: [bucketserve]}

    # on this machine (a local Ray cluster): bucketserve cluster --replicas 2 --router bucket

Sizes fit a small machine: each replica asks Ray for `replica_cpus` (0.5) and its engine uses
`threads` torch threads; the ingress asks for 0.1. Triton's ports are picked free when a
replica starts (the OS's ephemeral range; Ray's own workers use 10002-19999, its HTTP proxy the
ingress port), so they never collide with Ray's.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import asdict, dataclass, field

ROUTERS = ("bucket", "pow2")
APP_NAME = "bucketserve"


@dataclass
class ClusterSettings:
    replicas: int = 2
    router: str = "bucket"
    models: list[str] = field(default_factory=lambda: ["bucketserve"])
    threads: int = 1  # torch threads per replica (0 = all cores)
    params: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> config.pbtxt overrides
    model_repository: str | None = None
    replica_cpus: float = 0.5
    ingress_cpus: float = 0.1
    max_num_seqs: int = 32  # the engine's; a replica accepts twice as many requests at once
    max_len: int = 2048  # prompt lengths the ranges span (estimated tokens)
    min_observations: int = 16  # lengths seen before the ranges follow them (even ranges until then)
    imbalance: float = 1  # queued-work lead (in typical prompts' tokens) past which a range's replica hands over
    split: str = "padding"  # ranges: "padding" (the core's dp cut) or "tokens" (equal prompt-token share per replica)
    exit_timeout_s: int = 10
    health_check_period_s: float = 2.0

    def __post_init__(self):
        if self.router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {self.router!r}")
        if self.split not in ("padding", "tokens"):
            raise ValueError(f"split must be 'padding' or 'tokens', got {self.split!r}")
        if self.replicas < 1:
            raise ValueError("replicas must be >= 1")
        if isinstance(self.models, str):
            self.models = [m.strip() for m in self.models.split(",") if m.strip()]

    def overrides(self) -> dict[str, dict[str, str]]:
        out = {m: {"threads": str(self.threads), "max_num_seqs": str(self.max_num_seqs)} for m in self.models}
        for model, params in self.params.items():
            out.setdefault(model, {}).update({k: str(v) for k, v in params.items()})
        return out


def build_app(args: dict | None = None):
    """Serve application builder (a Serve config's import_path points here; `args` are its args)."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from .ingress import REPLICA_DEPLOYMENT, ClusterIngress
    from .replica import ReplicaConfig, TritonReplica
    from .router import BUCKET_ROUTER, POW2_ROUTER

    s = ClusterSettings(**(args or {}))
    router = RequestRouterConfig(
        request_router_class=BUCKET_ROUTER if s.router == "bucket" else POW2_ROUTER,
        request_router_kwargs={"state_key": APP_NAME, "replicas": s.replicas, "router": s.router, "imbalance": s.imbalance,
                               "max_len": s.max_len, "min_observations": s.min_observations, "split": s.split},
        request_routing_stats_period_s=1.0,
    )
    replica_config = ReplicaConfig(models=list(s.models), overrides=s.overrides(), model_repository=s.model_repository,
                                   exit_timeout_s=s.exit_timeout_s)
    replicas = serve.deployment(
        TritonReplica, name=REPLICA_DEPLOYMENT, num_replicas=s.replicas,
        ray_actor_options={"num_cpus": s.replica_cpus},
        max_ongoing_requests=2 * s.max_num_seqs, max_queued_requests=-1,
        health_check_period_s=s.health_check_period_s, health_check_timeout_s=30,
        graceful_shutdown_timeout_s=s.exit_timeout_s + 15, request_router_config=router,
    ).bind(asdict(replica_config))
    ingress = serve.deployment(
        ClusterIngress, name="ClusterIngress", num_replicas=1, ray_actor_options={"num_cpus": s.ingress_cpus},
        max_ongoing_requests=4096,
    ).bind(replicas, {"replicas": s.replicas, "router": s.router, "models": list(s.models), "max_len": s.max_len,
                      "min_observations": s.min_observations, "split": s.split, "state_key": APP_NAME})
    return ingress


@dataclass
class LocalCluster:
    """A local Ray cluster running the application; stop() takes it all down."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '') else self.host}:{self.port}"

    def replica_servers(self) -> list[int]:
        """Pids of the replicas' tritonservers on this machine (children of Serve replica actors)."""
        return replica_server_pids()

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def replica_server_pids(app: str = APP_NAME) -> list[int]:
    """tritonserver processes whose parent is one of this application's Serve replica actors
    (Ray names a replica's process ServeReplica:<app>:<deployment>)."""
    import psutil

    out = []
    for proc in psutil.process_iter(["name", "ppid", "cmdline"]):
        try:
            if proc.info["name"] != "tritonserver" and "tritonserver" not in " ".join(proc.info["cmdline"] or [])[:200]:
                continue
            parent = psutil.Process(proc.info["ppid"])
            if f"ServeReplica:{app}:TritonReplica" in " ".join(parent.cmdline()):
                out.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sorted(out)


def start_local(settings: ClusterSettings, host: str = "127.0.0.1", port: int = 9000, num_cpus: float | None = None,
                log=print) -> LocalCluster:
    """Start Ray on this machine, Serve's HTTP proxy on host:port, and the application; return
    once every replica is ready."""
    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    log(f"[bucketserve] starting a local Ray cluster ({settings.replicas} replica(s), router {settings.router})")
    ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
        serve.run(build_app(asdict(settings)), name=APP_NAME, route_prefix="/", blocking=False)
    except BaseException:
        ray.shutdown()
        raise
    cluster = LocalCluster(host, port)
    log(f"[bucketserve] cluster ready: OpenAI-compatible API on {cluster.url}/v1, status on {cluster.url}/v1/cluster/status")
    return cluster


def run_local(settings: ClusterSettings, host: str, port: int, log=print) -> int:
    """start_local, then wait for SIGTERM / SIGINT and take the cluster down."""
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        cluster = start_local(settings, host, port, log=log)
        try:
            stop.wait()
            log("[bucketserve] stopping the cluster")
        finally:
            cluster.stop()
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
