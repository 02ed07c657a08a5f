"""The decode step's row-wise pieces, eager or compiled with torch.compile.

Between its matmuls a lean decode layer (fast_step.py) runs a handful of small kernels:
residual add + RMSNorm (twice), rotary on q and k, SiLU(gate) * up. At decode sizes each
is a few microseconds of math and more of dispatch. Here each group is one function that
inductor fuses into one kernel; the matmuls (prepacked oneDNN weights in bf16, which cannot
enter an inductor graph) and the attention over the KV buffer's strided window stay eager.

Modes (the `compile` setting):
- off: the same functions run eagerly (the reference; no shape grid).
- inductor: one graph per grid batch size (dynamic=False); the runner pads decode batches
  to the grid (shape_grid.py), all shapes are compiled at start.
- inductor-dynamic: one graph with a symbolic batch dimension (dynamic=True), no padding.
- cudagraphs: inductor with mode="reduce-overhead" (one CUDA graph per grid batch size).
  For a GPU; untested here (no GPU on the machines this was built on).
- inductor-graph: the whole step in one graph per grid batch size (compiled_graph.py).

Compilation failing (no C++ compiler, an unsupported op) falls back to eager for good:
logged once, serving goes on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .validation import COMPILE_MODES as MODES

log = logging.getLogger("bucketserve.compile")


# -- the pieces (pure functions of tensors; the same code eager and compiled) ---------------------
def rms(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # LlamaRMSNorm: float32 statistics, rounded back to the input dtype, then the weight.
    return weight * F.rms_norm(h.float(), h.shape[-1:], None, eps).to(h.dtype)


def add_rms(h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    """(h + delta, RMSNorm of it): the residual add and the next norm in one pass."""
    h = h + delta
    return h, rms(h, weight, eps)


def rope(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, nqk: int, half: int) -> torch.Tensor:
    """Rotary on the first nqk heads (q and k) of qkv [B, T, heads, d]; rotate-half as a roll
    times the sign-folded sine."""
    qk = qkv[:, :, :nqk]
    return qk * cos + torch.roll(qk, half, dims=-1) * sin


def swiglu(gu: torch.Tensor, inter: int) -> torch.Tensor:
    return F.silu(gu[..., :inter]) * gu[..., inter:]


@dataclass
class CompileStats:
    shapes: int = 0  # grid shapes compiled (warmed up)
    seconds: float = 0.0  # wall time spent compiling
    calls: int = 0  # decode steps that ran the compiled pieces
    failed: str = ""  # why compilation was given up ("" while it works)


def set_cache_dir(root: Path) -> None:
    """Inductor's and FX's compiled artifacts on disk under the model cache (a restart loads
    them instead of compiling); an operator's TORCHINDUCTOR_CACHE_DIR wins."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))


class StepPieces:
    """add_rms / rope / swiglu for the lean step: compiled per `mode`, or eager."""

    def __init__(self, mode: str = "off"):
        if mode not in MODES:
            raise ValueError(f"compile must be one of {', '.join(MODES)}; got {mode!r}")
        self.mode = mode
        self.stats = CompileStats()
        self.compiled = False
        self.add_rms, self.rope, self.swiglu = add_rms, rope, swiglu
        if mode != "off":
            self._compile()

    @property
    def static_shapes(self) -> bool:
        """True when every batch size is its own graph (the runner pads to the grid)."""
        return self.compiled and self.mode in ("inductor", "cudagraphs")

    def _compile(self) -> None:
        options = {}
        if self.mode == "cudagraphs":
            options["mode"] = "reduce-overhead"
        dynamic = self.mode == "inductor-dynamic"
        raise_recompile_limit()
        try:
            self.add_rms = torch.compile(add_rms, dynamic=dynamic, fullgraph=True, **options)
            self.rope = torch.compile(rope, dynamic=dynamic, fullgraph=True, **options)
            self.swiglu = torch.compile(swiglu, dynamic=dynamic, fullgraph=True, **options)
            self.compiled = True
        except Exception as exc:  # noqa: BLE001 - any failure: eager
            self.give_up(exc)

    def give_up(self, exc: BaseException) -> None:
        """Eager from now on (logged once)."""
        give_up_log(self.stats, exc)
        self.add_rms, self.rope, self.swiglu = add_rms, rope, swiglu
        self.compiled = False

    def run(self, lean, ids, mask, pos, kv, r0, r1, write_at, grid):
        """The decode step with these pieces (fast_step.LeanLlama._decode)."""
        return lean._decode(ids, mask, pos, kv, r0, r1, write_at, self, grid)

    def warm_up(self, lean, sizes) -> None:
        lean.warm_up(self, sizes)


def raise_recompile_limit() -> None:
    """One graph per grid shape for each compiled function: room for every grid shape of any
    max_num_seqs (log2 + 2) with margin, past dynamo's default of 8."""
    import torch._dynamo

    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), 64))


def give_up_log(stats: CompileStats, exc: BaseException) -> None:
    if not stats.failed:
        log.warning("compiled decode step unavailable, running eager: %s: %s", type(exc).__name__, exc)
    stats.failed = f"{type(exc).__name__}: {exc}"
