"""Find a tritonserver binary and the environment it needs to run our Python-backend models.

Two sources, in order:
  1. a `tritonserver` on PATH (NVIDIA's container: it brings its own python backend);
  2. the nvidia-pytriton wheel, which ships Triton under site-packages/pytriton/tritonserver/.
     Its python backend is split: the backend library and utils in backends/python/, one stub
     per Python version in python_backend_stubs/3.X/. We assemble a backend directory
     (python/ holding all three) under the cache dir.

The Python backend stub runs Python in isolated mode (PYTHONPATH ignored); it finds this
virtual environment through the `python3` first on PATH, so the venv's bin goes first.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

STUB_NAME = "triton_python_backend_stub"
BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")


@dataclass
class TritonInstall:
    binary: Path
    backend_dir: Path | None  # None: the server's default backend directory
    env: dict[str, str] = field(default_factory=dict)  # environment for the server process
    source: str = "path"  # "path" | "pytriton"


def default_cache_dir() -> Path:
    """$BUCKETSERVE_CACHE, else ~/.cache/bucketserve (the same place prepared models live)."""
    return Path(os.environ.get("BUCKETSERVE_CACHE") or Path.home() / ".cache" / "bucketserve").expanduser()


def _pytriton_root() -> Path | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    return root if (root / "bin" / "tritonserver").is_file() else None


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy to a temporary name, then rename: a stub that is running can't be overwritten
    in place ("Text file busy"), but it can be replaced."""
    if dst.exists() and dst.stat().st_size == src.stat().st_size and dst.stat().st_mtime >= src.stat().st_mtime:
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def build_backend_dir(triton_root: Path, cache_dir: Path) -> Path:
    """Assemble <cache>/triton-backends/py3.X/python/ with the backend library, utils and stub."""
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = triton_root / "python_backend_stubs" / py / STUB_NAME
    if not stub.is_file():
        raise RuntimeError(f"the nvidia-pytriton wheel has no python backend stub for Python {py} ({stub})")
    backend_dir = cache_dir / "triton-backends" / f"py{py}"
    python_dir = backend_dir / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name in BACKEND_FILES:
        _copy_atomic(triton_root / "backends" / "python" / name, python_dir / name)
    _copy_atomic(stub, python_dir / STUB_NAME)
    os.chmod(python_dir / STUB_NAME, 0o755)
    return backend_dir


def _venv_path_env() -> dict[str, str]:
    """PATH with this interpreter's bin first, so the stub's `python3` is ours (venv found)."""
    bindir = os.path.dirname(os.path.abspath(sys.executable))
    path = os.environ.get("PATH", "")
    parts = [p for p in path.split(os.pathsep) if p and p != bindir]
    return {"PATH": os.pathsep.join([bindir, *parts])}


def find_tritonserver(cache_dir: Path | None = None, prefer_path: bool = True) -> TritonInstall:
    env = _venv_path_env()
    on_path = shutil.which("tritonserver") if prefer_path else None
    if on_path:
        return TritonInstall(binary=Path(on_path), backend_dir=None, env=env, source="path")
    root = _pytriton_root()
    if root is None:
        raise RuntimeError(
            "no tritonserver found: put one on PATH (NVIDIA's tritonserver container) "
            "or install the server extra: pip install -c constraints.txt -e '.[server]'"
        )
    backend_dir = build_backend_dir(root, cache_dir or default_cache_dir())
    # The running Python's lib dir first: otherwise the stub may load a system libpython of a
    # different patch level beside this interpreter's stdlib. Then the wheel's bundled libs.
    libdirs = [sysconfig.get_config_var("LIBDIR") or "", str(root.parent.parent / "nvidia_pytriton.libs")]
    old = os.environ.get("LD_LIBRARY_PATH", "")
    env["LD_LIBRARY_PATH"] = os.pathsep.join([d for d in libdirs if d] + ([old] if old else []))
    return TritonInstall(binary=root / "bin" / "tritonserver", backend_dir=backend_dir, env=env, source="pytriton")
