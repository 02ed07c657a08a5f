"""`bucketserve` command line.

    bucketserve serve                                  # SmolLM2 on 127.0.0.1:8000/8001/8002, OpenAI API on :9000
    bucketserve serve --policy continuous              # same model, another policy, this run only
    bucketserve serve --models bucketserve,bucketserve_tiny
    bucketserve serve --param bucketserve_tiny:policy=static --param memory_fraction=0.5
    bucketserve prepare                                # convert the default model now (cached)
    bucketserve cluster --replicas 2 --router bucket   # Triton replicas on a local Ray cluster, OpenAI API on :9000

Setting flags (--policy, --model-dir, ...) apply to the first model of --models; --param
MODEL:KEY=VALUE reaches any model, KEY=VALUE the first one. The run's effective config.pbtxt
files are written to --run-dir (a temporary directory by default).
"""

from __future__ import annotations

import argparse
import sys

from .launcher import DEFAULT_MODELS, ServerError, ServerOptions, serve

# flag -> config.pbtxt parameter
SETTING_FLAGS = {
    "policy": "policy",
    "model_dir": "model_dir",
    "device": "device",
    "dtype": "dtype",
    "threads": "threads",
    "max_model_len": "max_model_len",
    "default_max_tokens": "default_max_tokens",
    "max_num_seqs": "max_num_seqs",
    "memory_fraction": "memory_fraction",
    "memory_probe": "memory_probe",
    "max_queue_requests": "max_queue_requests",
    "max_queue_tokens": "max_queue_tokens",
}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def overrides_from_args(args: argparse.Namespace, models: list[str]) -> dict[str, dict[str, str]]:
    primary = models[0]
    out: dict[str, dict[str, str]] = {}
    for flag, key in SETTING_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            out.setdefault(primary, {})[key] = str(value)
    if args.trust_remote_code:
        out.setdefault(primary, {})["trust_remote_code"] = "true"
    for item in args.param or []:
        head, sep, value = item.partition("=")
        target, _, key = head.rpartition(":")
        key = key.strip()
        if not sep or not key:
            raise SystemExit(f"--param {item!r}: expected [MODEL:]KEY=VALUE")
        model = target or primary
        if model not in models:
            raise SystemExit(f"--param {item!r}: model {model!r} is not served (models: {', '.join(models)})")
        out.setdefault(model, {})[key] = value
    return out


def cmd_serve(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    overrides = overrides_from_args(args, models)
    try:
        return serve(ServerOptions(
            models=models,
            overrides=overrides,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            model_repository=args.model_repository,
            run_dir=args.run_dir,
            exit_timeout_s=args.exit_timeout_secs,
            ready_timeout_s=args.ready_timeout,
            log_file=args.log_file,
            inherit_output=args.log_file is None,
            instance_kind=args.instance_kind,
            openai_port=args.openai_port or None,  # 0 turns the OpenAI-compatible API off
            expose_http=args.expose_http,
            max_body_bytes=args.max_body_bytes,
        ), log=_log)
    except (ServerError, ValueError, RuntimeError) as exc:
        _log(f"[bucketserve] failed to start: {exc}")
        return 1


def cmd_prepare(args: argparse.Namespace) -> int:
    from bucket_scheduler.runtime.models import resolve_model

    path = resolve_model(args.model_dir)
    print(path)
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    try:
        from bucket_scheduler.cluster.app import ClusterSettings, run_local
    except ImportError as exc:
        _log(f"[bucketserve] the cluster needs Ray Serve: pip install 'bucketserve[cluster]' ({exc})")
        return 1
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    params: dict[str, dict[str, str]] = {}
    for model, values in overrides_from_args(args, models).items():
        params[model] = values
    settings = ClusterSettings(replicas=args.replicas, router=args.router, models=models, threads=args.threads,
                               params=params, model_repository=args.model_repository, replica_cpus=args.replica_cpus,
                               max_num_seqs=args.max_num_seqs or 32, split=args.ranges, imbalance=args.imbalance)
    return run_local(settings, args.host, args.openai_port, log=_log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bucketserve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="start tritonserver with the BucketServe model(s) and wait")
    s.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated models of the repository to serve (default: bucketserve)")
    s.add_argument("--model-repository", help="source repository (default: the one beside this package, else ./model_repository)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the server)")
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--openai-port", type=int, default=9000, help="OpenAI-compatible API (/v1/chat/completions, ...); 0 turns it off")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20, help="OpenAI API: larger request bodies get 413 (default 1 MiB)")
    s.add_argument("--expose-http", action="store_true",
                   help="bind Triton's HTTP port to --host too (default: 127.0.0.1 only; its front end crashes on bodies of 4 MiB or more)")
    s.add_argument("--exit-timeout-secs", type=int, default=30, help="how long in-flight requests may finish on shutdown")
    s.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for the models to load")
    s.add_argument("--run-dir", help="where the run's model repository copy is written (default: a temp dir)")
    s.add_argument("--log-file", help="write the server's log here instead of the terminal")
    s.add_argument("--instance-kind", choices=("cpu", "gpu"), help="rewrite instance_group kind (default: as in config.pbtxt)")
    s.add_argument("--policy", help="scheduling policy: bucket | static | continuous | uellm")
    s.add_argument("--model-dir", help="local Hugging Face model directory, or 'tiny' / 'smollm2'")
    s.add_argument("--device", help="auto | cpu | cuda")
    s.add_argument("--dtype", help="auto | float32 | bfloat16 | float16")
    s.add_argument("--threads", type=int, help="torch intra-op threads (0 = all cores)")
    s.add_argument("--max-model-len", type=int)
    s.add_argument("--default-max-tokens", type=int)
    s.add_argument("--max-num-seqs", type=int)
    s.add_argument("--memory-fraction", type=float)
    s.add_argument("--memory-probe", help="auto | psutil | cuda | nvml | fixed:<bytes>")
    s.add_argument("--max-queue-requests", type=int)
    s.add_argument("--max-queue-tokens", type=int)
    s.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model directory (off by default)")
    s.add_argument("--param", action="append", metavar="[MODEL:]KEY=VALUE", help="any config.pbtxt parameter, e.g. scheduler.<option>=...")
    s.set_defaults(fn=cmd_serve)

    c = sub.add_parser("cluster", help="N tritonserver replicas behind one OpenAI-compatible ingress on a local Ray cluster")
    c.add_argument("--replicas", type=int, default=2)
    c.add_argument("--router", choices=("bucket", "pow2"), default="bucket",
                   help="bucket: each replica serves a prompt-length range; pow2: Ray's power-of-two-choices")
    c.add_argument("--models", default=",".join(DEFAULT_MODELS))
    c.add_argument("--model-repository")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--openai-port", type=int, default=9000)
    c.add_argument("--threads", type=int, default=1, help="torch threads per replica")
    c.add_argument("--replica-cpus", type=float, default=0.5, help="CPUs Ray reserves per replica (fractional)")
    c.add_argument("--ranges", choices=("padding", "tokens"), default="padding",
                   help="bucket router: the core's padding-optimal ranges, or ranges of equal prompt-token share (tokens)")
    c.add_argument("--imbalance", type=float, default=1.0,
                   help="bucket router: queued-work lead (typical prompts) past which a range's replica hands over")
    for flag in SETTING_FLAGS:
        if flag not in ("threads",):
            c.add_argument(f"--{flag.replace('_', '-')}", type=int if flag in ("max_model_len", "default_max_tokens",
                           "max_num_seqs", "max_queue_requests", "max_queue_tokens") else None)
    c.add_argument("--trust-remote-code", action="store_true")
    c.add_argument("--param", action="append", metavar="[MODEL:]KEY=VALUE")
    c.set_defaults(fn=cmd_cluster)

    p = sub.add_parser("prepare", help="convert / build a model into the cache now and print its directory")
    p.add_argument("model_dir", nargs="?", default=None, help="default: SmolLM2-135M-Instruct; 'tiny' for the test model")
    p.set_defaults(fn=cmd_prepare)

    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
