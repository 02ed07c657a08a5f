"""The scheduling core imports no torch, Triton, pynvml or psutil: not at import, not lazily.

A fresh interpreter gets a meta path finder that raises on any of those modules, then imports
every module under bucket_scheduler.core (and the replay entry point) and exercises the probes
the core keeps. Any import of a blocked module, lazy or not, fails the run.
"""

import subprocess
import sys

BLOCKED = ("torch", "pynvml", "psutil", "transformers", "tritonclient", "triton_python_backend_utils")

CODE = f"""
import importlib, pkgutil, sys

BLOCKED = {BLOCKED!r}
for name in BLOCKED:
    sys.modules.pop(name, None)

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"core imported {{name}}")
        return None

sys.meta_path.insert(0, Block())

import bucket_scheduler.core as core
names = [m.name for m in pkgutil.walk_packages(core.__path__, "bucket_scheduler.core.")]
for name in names:
    importlib.import_module(name)
import bucket_scheduler.replay

from bucket_scheduler.core.memory import FixedProbe, KVSpec, MemoryPlanner, make_config_probe
from bucket_scheduler.core.factory import POLICIES, make_scheduler
from bucket_scheduler.core.request import Request

planner = MemoryPlanner(KVSpec(2, 2, 8), make_config_probe("fixed:1000000000"))
for policy in POLICIES:
    s = make_scheduler(policy, planner, 256, 4)
    s.add(Request("a", 10, 4, 0.0))
    s.schedule(0.0)
print(len(names))
"""


def test_core_imports_no_torch_pynvml_psutil_or_triton():
    res = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip()) >= 10  # every core module was imported


def test_the_blocker_catches_a_lazy_import():
    """The guard itself works: a lazy import of a blocked module inside a function fails."""
    code = CODE.split("import bucket_scheduler.core as core")[0] + "\ndef f():\n    import psutil\nf()\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode != 0 and "core imported psutil" in res.stderr
