import os
import socket
import stat
from pathlib import Path

from bucket_scheduler.serving import launcher
from bucket_scheduler.serving.cli import main as cli_main  # noqa: F401  (the console script imports)
from bucket_scheduler.serving.tritonserver import STUB_NAME, TritonInstall, build_backend_dir


def test_free_port_is_bindable():
    port = launcher.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_backend_dir_holds_library_utils_and_stub(tmp_path):
    root = tmp_path / "tritonserver"
    (root / "backends" / "python").mkdir(parents=True)
    (root / "backends" / "python" / "libtriton_python.so").write_bytes(b"lib")
    (root / "backends" / "python" / "triton_python_backend_utils.py").write_text("# utils")
    import sys

    stub_dir = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    stub_dir.mkdir(parents=True)
    (stub_dir / STUB_NAME).write_bytes(b"stub-v1")
    backend = build_backend_dir(root, tmp_path / "cache")
    py = backend / "python"
    assert sorted(p.name for p in py.iterdir()) == sorted(["libtriton_python.so", "triton_python_backend_utils.py", STUB_NAME])
    assert os.stat(py / STUB_NAME).st_mode & stat.S_IXUSR
    # a changed stub replaces the old one (by rename, so a running stub is not overwritten)
    (stub_dir / STUB_NAME).write_bytes(b"stub-v2-longer")
    build_backend_dir(root, tmp_path / "cache")
    assert (py / STUB_NAME).read_bytes() == b"stub-v2-longer"
    assert not [p for p in py.iterdir() if p.name.endswith(".tmp")]


def test_command_binds_host_and_ports():
    install = TritonInstall(binary=Path("/x/tritonserver"), backend_dir=Path("/b"))
    cmd = launcher.build_command(install, Path("/repo"), "127.0.0.1", 1, 2, 3, 7, gpu_metrics=False)
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1", "--http-port=1",
                 "--grpc-port=2", "--metrics-port=3", "--exit-timeout-secs=7", "--allow-gpu-metrics=false",
                 "--backend-directory=/b", "--model-repository=/repo", "--strict-readiness=true"):
        assert flag in cmd
    assert not any(a.startswith("--model-control-mode") for a in cmd)  # model-control API stays off


def test_exposed_host_keeps_triton_http_on_loopback():
    """Triton 2.51's HTTP front end crashes on bodies >= 4 MiB: --host exposes gRPC and metrics
    (and the OpenAI port), HTTP only when asked for."""
    install = TritonInstall(binary=Path("/x/tritonserver"), backend_dir=None)
    cmd = launcher.build_command(install, Path("/repo"), "0.0.0.0", 1, 2, 3, 7, gpu_metrics=False, http_host="127.0.0.1")
    assert "--http-address=127.0.0.1" in cmd and "--grpc-address=0.0.0.0" in cmd and "--metrics-address=0.0.0.0" in cmd


def test_frontend_command_names_models_tokenizers_and_parent():
    from bucket_scheduler.serving.frontend import frontend_command

    cmd = frontend_command("127.0.0.1:8001", "0.0.0.0", 9000, ["a", "b"], {"a": ("/models/a", True)}, max_body_bytes=5)
    for flag in ("--grpc-url=127.0.0.1:8001", "--host=0.0.0.0", "--port=9000", "--model=a=/models/a", "--model=b",
                 "--trust-remote-code=a", "--max-body-bytes=5", f"--parent-pid={os.getpid()}"):
        assert flag in cmd


def test_stale_shm_regions_are_removed_but_mapped_ones_kept():
    import mmap

    live = Path(f"{launcher.SHM_GLOB[:-1]}test_live_{os.getpid()}")
    stale = Path(f"{launcher.SHM_GLOB[:-1]}test_stale_{os.getpid()}")
    for p in (live, stale):
        p.write_bytes(b"\0" * 4096)
    try:
        with open(live, "r+b") as f, mmap.mmap(f.fileno(), 4096):
            removed = launcher.clean_stale_shm()
            assert str(stale) in removed and not stale.exists()
            assert live.exists()
    finally:
        for p in (live, stale):
            if p.exists():
                p.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purposes
        return f.read().split(")")[-1].split()[0] != "Z"


def test_handle_close_kills_the_group_members_that_outlive_the_server(tmp_path):
    """A stub that outlives tritonserver must not linger: close() kills the whole group (one
    helper), then stops the front end and removes the temporary run dir."""
    import subprocess
    import sys
    import tempfile
    import time

    from bucket_scheduler.serving.launcher import ServerHandle

    pid_file = tmp_path / "child"
    script = (f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid))")  # the leader exits at once, its child stays
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    leader.wait(30)
    child = int(pid_file.read_text())
    assert _alive(child)

    class Frontend:
        stopped = False

        def stop(self):
            Frontend.stopped = True

    tmp = tempfile.TemporaryDirectory()
    handle = ServerHandle(leader, "127.0.0.1", 1, 2, 3, tmp_path, None, ["m"], 5, tmp, frontend=Frontend())
    assert handle.stop(timeout_s=5) == 0
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    assert Frontend.stopped and not Path(tmp.name).exists() and (tmp_path / "draining").exists()
