"""A cluster simulator on the cost-model clock: the paper's setup and the systems it compares.

Pure Python like the rest of the core.  Pieces: workload.py (the paper's length
distributions, Poisson arrivals, SLOs), hardware.py (GPUs, model, link), instance.py
(one GPU stepping a core scheduler), cluster.py (router and event loop), systems.py
(BucketServe, DistServe, UELLM, static, vLLM as deployments of core policies).
Sweeps, reports and the CLI live in loadtest/bucketserve_bench/sim.py.
"""

from .cluster import Deployment, SimRun, simulate
from .hardware import ClusterSpec, GpuSpec
from .systems import SYSTEMS, SystemConfig, build, default_config
from .workload import PaperWorkload, SimRequestSpec

__all__ = ["ClusterSpec", "Deployment", "GpuSpec", "PaperWorkload", "SYSTEMS", "SimRequestSpec", "SimRun",
           "SystemConfig", "build", "default_config", "simulate"]
