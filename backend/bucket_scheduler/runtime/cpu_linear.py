"""Prepacked bfloat16 linear layers on CPU.

torch's F.linear hands oneDNN a plain weight every call, and oneDNN reorders it into its
blocked layout each time; packing once (what torch.compile's freezing pass does) cut a
SmolLM2 decode step with 32 rows by about 15-25% here (docs/benchmarks.md). Same math:
outputs are bit-identical to F.linear. Costs a second copy of the linear weights.
"""

from __future__ import annotations

import torch


def _packed_forward(weight: torch.Tensor, bias: torch.Tensor | None):
    return packed_linear(weight, bias)[0]


def packed_linear(weight: torch.Tensor, bias: torch.Tensor | None):
    """(forward, bytes of the packed copy) for one weight (the lean step's fused ones)."""
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 32)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return forward, weight.numel() * weight.element_size()  # opaque tensor: its plain size


def can_prepack(model: torch.nn.Module) -> bool:
    """bfloat16 on a CPU whose torch has the oneDNN packing ops, and they give F.linear's
    exact results."""
    first = next(model.parameters())
    if first.device.type != "cpu" or first.dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return False
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        probe = torch.zeros(2, linears[0].in_features, dtype=torch.bfloat16)
        ref = torch.nn.functional.linear(probe, linears[0].weight, linears[0].bias)
        return torch.equal(_packed_forward(linears[0].weight, linears[0].bias)(probe), ref)
    except (RuntimeError, AttributeError, IndexError):  # op missing in this torch build
        return False


def prepack_linears(model: torch.nn.Module) -> int:
    """Swap every nn.Linear's forward for a prepacked one when the model is bfloat16 on a
    CPU with oneDNN; returns how many were swapped (0: left as is)."""
    if not can_prepack(model):
        return 0
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for m in linears:
        m.forward = _packed_forward(m.weight, m.bias)
    return len(linears)
