"""Attention for the runner: torch SDPA, except for decode steps on a CPU.

For one query token per row (a decode step), torch's CPU SDPA with a padding mask is
slow (measured ~4 ms per layer for 32 rows in bfloat16, 8x a plain matmul-softmax-matmul;
docs/benchmarks.md). The decode path below groups query heads by KV head (no repeat of
K/V), does the softmax in float32 and is otherwise the same math. Prefill keeps SDPA.

Registered with transformers under the name "bucketserve" (same mask builder as "sdpa").
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTN_IMPLEMENTATION = "bucketserve"


def bucketserve_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                          **kwargs):
    if query.shape[2] != 1 or query.device.type != "cpu" or kwargs.get("position_bias") is not None \
            or kwargs.get("softcap") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    b, h, _, d = query.shape
    kv = key.shape[1]
    q = query.reshape(b, kv, h // kv, d)  # query heads grouped under their KV head
    scores = torch.matmul(q, key.transpose(-1, -2)).float()  # [b, kv, groups, t]
    scores *= scaling if scaling is not None else d**-0.5
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores.masked_fill_(~attention_mask.view(b, 1, 1, -1), float("-inf"))
        else:
            scores += attention_mask.view(b, 1, 1, -1).float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # [b, kv, groups, d]
    return out.reshape(b, 1, h, d), None


def register() -> str:
    """Make the implementation known to transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, bucketserve_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION
