import subprocess
import sys

CODE = """
import sys
import bucket_scheduler.core.factory, bucket_scheduler.core.memory, bucket_scheduler.core.buckets
import bucket_scheduler.core.clock, bucket_scheduler.core.replay, bucket_scheduler.replay, bucket_scheduler.core.sim
from bucket_scheduler.core.memory import make_probe
make_probe("auto", device="cpu")
bad = [m for m in ("torch", "tritonclient", "triton_python_backend_utils") if m in sys.modules]
print(",".join(bad))
"""


def test_core_imports_no_torch_or_triton():
    res = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == ""
