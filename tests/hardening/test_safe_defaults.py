"""Safe defaults: the server binds 127.0.0.1 unless told otherwise, trust_remote_code is off,
and Triton's model-control API (load / unload over HTTP and gRPC) is off."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import psutil

from bucket_scheduler.runtime.api import EngineConfig
from bucket_scheduler.serving import cli
from bucket_scheduler.serving.launcher import build_command
from bucket_scheduler.serving.repository import default_repository, list_models, read_parameters
from bucket_scheduler.serving.tritonserver import TritonInstall

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1")  # gRPC listens on the IPv4-mapped form


def test_defaults_in_code_and_configs():
    parsed = _parse(["serve"])
    assert parsed.host == "127.0.0.1" and parsed.trust_remote_code is False
    assert parsed.openai_port == 9000 and parsed.expose_http is False and parsed.max_body_bytes == 1 << 20
    assert cli.overrides_from_args(parsed, ["bucketserve"]) == {}  # nothing turns trust_remote_code on
    assert EngineConfig().trust_remote_code is False
    repo = default_repository()
    for model in list_models(repo):
        params = read_parameters((Path(repo) / model / "config.pbtxt").read_text())
        assert params.get("trust_remote_code", "false") == "false", model
    cmd = build_command(TritonInstall(Path("tritonserver"), None), Path("repo"), "127.0.0.1", 1, 2, 3, 30, False)
    assert {"--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"} <= set(cmd)
    # No --model-control-mode: Triton's default "none" (no load / unload API).
    assert not any(c.startswith(("--model-control-mode", "--load-model")) for c in cmd)


def _parse(argv):
    import argparse

    captured = {}

    def fake_serve(a):
        captured["args"] = a
        return 0

    real = cli.cmd_serve
    cli.cmd_serve = fake_serve
    try:
        # main() binds cmd_serve when it builds the parser, so the patch is seen.
        cli.main(argv)
    finally:
        cli.cmd_serve = real
    assert isinstance(captured["args"], argparse.Namespace)
    return captured["args"]


def test_running_server_listens_on_loopback_only_and_refuses_model_control(server):
    proc = psutil.Process(server.handle.pid)
    listening = [c for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(c.laddr.ip in LOOPBACK for c in listening), listening
    for child in proc.children(recursive=True):
        assert not [c for c in child.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    # The OpenAI-compatible front end beside it binds loopback too.
    front = psutil.Process(server.handle.frontend.process.pid)
    front_listening = [c for c in front.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert front_listening and all(c.laddr.ip in LOOPBACK for c in front_listening), front_listening
    for action in ("unload", "load"):
        req = urllib.request.Request(f"{server.handle.http_url}/v2/repository/models/{server.model}/{action}",
                                     data=b"{}", method="POST")
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError(f"{action} was allowed")
        except urllib.error.HTTPError as exc:
            assert exc.code >= 400 and "not allowed" in exc.read().decode()
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    g = grpcclient.InferenceServerClient(server.grpc_url())
    try:
        g.unload_model(server.model)
        raise AssertionError("unload over gRPC was allowed")
    except InferenceServerException as exc:
        assert "not allowed" in str(exc)
    finally:
        g.close()
    assert server.handle.ready()
