"""The systems the paper compares, each built from core policies on the simulated cluster.

    bucketserve  disaggregated: prefill pool runs the `bucket` policy (Algorithm 1 buckets,
                 memory-aware batch size, online earliest-deadline first), its batches padded
                 to their longest prompt (the paper's padded runtime); decode pool runs
                 continuous batching (`continuous`, paged KV); same GPU split as DistServe.
    distserve    disaggregated: prefill pool first-come-first-served whole prompts, stopping at
                 the first that does not fit (batch size, tokens per batch, KV memory): the
                 `continuous` policy with nothing left running between steps, paged; decode as
                 above.  Pool sizes: searched by the caller for the best goodput.
    uellm        colocated, one model copy per GPU: the `uellm` policy (SLO-ODBS groups run to
                 completion, padded), oracle output lengths as in UELLM's experiments.
    static       colocated: the `static` policy (batches of 8, 100 ms delay, padded).
    vllm         colocated: `continuous` (FCFS) with chunked prefill, paged.

Every option below is a stated choice (docs/simulator.md); `overrides` replaces any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .hardware import ClusterSpec
from .instance import ColocatedInstance, DecodeInstance, PrefillInstance, SchedulerSpec, build_scheduler
from .cluster import Deployment

SYSTEMS = ("bucketserve", "distserve", "uellm", "static", "vllm")
DISAGGREGATED = ("bucketserve", "distserve")
NO_LIMIT = 1 << 40


@dataclass(frozen=True)
class SystemConfig:
    name: str
    prefill: SchedulerSpec | None = None  # disaggregated
    decode: SchedulerSpec | None = None
    colocated: SchedulerSpec | None = None
    prefill_padded: bool = False  # prefill step time from padded slots (N x longest)
    decode_padded: bool = False
    chunk_tokens: int | None = None  # colocated chunked prefill (vLLM)

    @property
    def disaggregated(self) -> bool:
        return self.colocated is None


def _decode_spec() -> SchedulerSpec:
    return SchedulerSpec("continuous", {"max_num_batched_tokens": NO_LIMIT}, "per_request", 256)


def default_config(name: str, bucket_options: dict | None = None) -> SystemConfig:
    if name == "bucketserve":
        opts = {"bucket_mode": "algorithm1", **(bucket_options or {})}
        return SystemConfig(name, prefill=SchedulerSpec("bucket", opts, "padded", 32), decode=_decode_spec(),
                            prefill_padded=True)
    if name == "distserve":
        # vLLM's default token budget, max(max_model_len, 2048), at the cluster's max_model_len of 4096
        return SystemConfig(name, prefill=SchedulerSpec("continuous", {"max_num_batched_tokens": 4096}, "per_request", 32),
                            decode=_decode_spec())
    if name == "uellm":
        return SystemConfig(name, colocated=SchedulerSpec("uellm", {}, "padded", 64), prefill_padded=True, decode_padded=True)
    if name == "static":
        return SystemConfig(name, colocated=SchedulerSpec("static", {}, "padded", 64), prefill_padded=True, decode_padded=True)
    if name == "vllm":
        return SystemConfig(name, colocated=SchedulerSpec("continuous", {"max_num_batched_tokens": NO_LIMIT}, "per_request", 256),
                            chunk_tokens=2048)
    raise ValueError(f"unknown system {name!r}; use one of {SYSTEMS}")


def build(cfg: SystemConfig, cluster: ClusterSpec, num_prefill: int | None = None) -> Deployment:
    """A deployment of `cfg` on `cluster`; disaggregated systems need num_prefill (the rest decode)."""
    gpu = cluster.gpu
    free = gpu.free_kv_bytes

    def sched(spec):
        return build_scheduler(spec, gpu.kv, free, cluster.memory_fraction, cluster.max_model_len)

    if not cfg.disaggregated:
        cost = replace(gpu.cost, padded=cfg.prefill_padded)
        if cfg.decode_padded != cfg.prefill_padded:
            raise ValueError("a colocated system pads both phases or neither")
        return Deployment(colocated=[ColocatedInstance(f"gpu{i}", sched(cfg.colocated), cost, chunk_tokens=cfg.chunk_tokens)
                                     for i in range(cluster.num_gpus)])
    if num_prefill is None or not 1 <= num_prefill < cluster.num_gpus:
        raise ValueError(f"{cfg.name}: num_prefill must be in [1, {cluster.num_gpus - 1}], got {num_prefill}")
    pre_cost = replace(gpu.cost, padded=cfg.prefill_padded)
    dec_cost = replace(gpu.cost, padded=cfg.decode_padded)
    prefill = [PrefillInstance(f"prefill{i}", sched(cfg.prefill), pre_cost, handoff=None) for i in range(num_prefill)]
    decode = [DecodeInstance(f"decode{i}", sched(cfg.decode), dec_cost) for i in range(cluster.num_gpus - num_prefill)]
    return Deployment(prefill=prefill, decode=decode, transfer_s=cluster.transfer_s)


def splits(cluster: ClusterSpec) -> list[int]:
    """Prefill pool sizes a disaggregated system can take on this cluster."""
    return list(range(1, cluster.num_gpus))
