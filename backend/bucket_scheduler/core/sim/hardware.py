"""The simulated machine: GPUs, the model on them, the link between them.

Paper setup (stated in docs/simulator.md): 4x A100 40 GB with NVLink, Llama-2-13B in
fp16 at tensor parallelism 1 (one model copy per GPU).  Step times come from
DistServe's cost model fitted for OPT-13B on an A100 (core/clock.py), the proxy for
Llama-2-13B (same layer count, width and heads).  Memory decides batch sizes:

    free KV memory per GPU = gpu_bytes - weight_bytes - reserved_bytes

which a FixedProbe reports to every scheduler's MemoryPlanner (the planner keeps its
own safety fraction on top).  KV transfer between GPUs (disaggregated serving)
takes prompt_len * kv.bytes_per_token / link_bytes_per_s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..clock import CostModel
from ..memory import GIB, KVSpec

LLAMA2_13B_KV = KVSpec(num_layers=40, num_kv_heads=40, head_dim=128, dtype_bytes=2)
LLAMA2_13B_PARAMS = 13_015_864_320


@dataclass(frozen=True)
class GpuSpec:
    name: str = "A100-40GB"
    memory_bytes: int = 40 * GIB
    weight_bytes: int = 2 * LLAMA2_13B_PARAMS  # fp16 weights of one model copy
    reserved_bytes: int = 2 * GIB  # CUDA context, activation workspace
    kv: KVSpec = LLAMA2_13B_KV
    cost: CostModel = field(default_factory=CostModel)

    @property
    def free_kv_bytes(self) -> int:
        free = self.memory_bytes - self.weight_bytes - self.reserved_bytes
        if free <= 0:
            raise ValueError(f"{self.name}: the model does not fit ({self.weight_bytes / GIB:.1f} GiB of weights)")
        return free


@dataclass(frozen=True)
class ClusterSpec:
    num_gpus: int = 4
    gpu: GpuSpec = field(default_factory=GpuSpec)
    link_bytes_per_s: float = 300e9  # NVLink 3 on A100: 600 GB/s both ways, 300 GB/s one way
    memory_fraction: float = 0.9  # the planner's share of free memory (the paper's M_safe)
    max_model_len: int = 4096

    def transfer_s(self, prompt_len: int) -> float:
        return prompt_len * self.gpu.kv.bytes_per_token / self.link_bytes_per_s
