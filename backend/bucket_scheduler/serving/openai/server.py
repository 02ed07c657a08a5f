"""The front end's process: `python -m bucket_scheduler.serving.openai.server --grpc-url ... --port ...`.

`bucketserve serve` starts it once Triton is ready and stops it after Triton (see launcher.py);
it can also run on its own against any tritonserver that hosts BucketServe models.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from .app import DEFAULT_MAX_BODY_BYTES, FrontendConfig, create_app


def parse_models(items: list[str]) -> tuple[list[str], dict[str, str]]:
    """["name=dir", "name"] -> (names, {name: dir})."""
    names, dirs = [], {}
    for item in items:
        name, sep, path = item.partition("=")
        names.append(name)
        if sep and path:
            dirs[name] = path
    return names, dirs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bucketserve-openai", description=__doc__)
    p.add_argument("--grpc-url", default="127.0.0.1:8001", help="tritonserver's gRPC address")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--model", action="append", default=[], metavar="NAME[=TOKENIZER_DIR]",
                   help="a served model, with the local directory its chat template comes from (repeatable; "
                        "none: every model Triton has ready)")
    p.add_argument("--trust-remote-code", action="append", default=[], metavar="NAME",
                   help="allow tokenizer code from this model's directory")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="larger request bodies get 413")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone (the launcher passes its own)")
    args = p.parse_args(argv)
    if args.parent_pid:
        watch_parent(args.parent_pid)

    import uvicorn

    names, dirs = parse_models(args.model)
    config = FrontendConfig(grpc_url=args.grpc_url, models=names, model_dirs=dirs,
                            trust_remote_code={n: True for n in args.trust_remote_code}, max_body_bytes=args.max_body_bytes)
    # uvloop + httptools: the fast paths uvicorn offers (both pinned); no access log on the hot path.
    uvicorn.run(create_app(config), host=args.host, port=args.port, loop="uvloop", http="httptools",
                log_level=args.log_level, access_log=False, timeout_graceful_shutdown=5)
    return 0


def watch_parent(pid: int, every_s: float = 1.0) -> None:
    """The launcher runs us in our own session (a Ctrl-C reaches only the launcher, which stops
    Triton first). If the launcher is killed outright, nobody would stop us: leave by ourselves."""

    def watch():
        while True:
            time.sleep(every_s)
            if os.getppid() != pid:
                os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
