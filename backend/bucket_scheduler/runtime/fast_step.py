"""A lean forward pass for Llama-family models, straight over the runner's KV buffers.

transformers' generic forward costs a decode step far more than its math on a CPU: per
layer it goes through nested modules, kwargs plumbing, a Cache object, separate q/k/v and
gate/up matmuls and many small norm / rotary / activation kernels, and it builds the
attention mask and the rotary table every step. At small batch a decode step is bound by
reading the weights once; everything else is overhead. This module computes the same math
with fewer, larger calls:

- q/k/v and gate/up fused into one matmul each (weights concatenated once at load);
- rotary cos/sin taken from a table built once with the model's own rotary module
  (so every rope type that does not depend on the sequence length gives the same numbers);
- rotate-half as a roll times a sign-folded sine (same values, fewer kernels);
- RMSNorm through torch's fused kernel (bit-identical to LlamaRMSNorm);
- decode attention as one SDPA kernel per pass (a row's query heads grouped under their KV
  head as the query length: no repeat of K/V) over the live
  column window [start, end] of BatchKV's buffers, strided, no copy; the padding mask is
  one additive bias built per step (docs/benchmarks.md: faster than attention.py's
  matmul-softmax-matmul, which `sdpa_decode = False` selects for comparison);
- one pass for a whole engine step (`mixed`): the decode rows and every prompt chunk of the
  step go through the matmuls together as one flat token matrix (the weights are read once a
  step, not once per prefill and again for the decode); only the KV writes and attention go
  segment by segment;
- prefill attention: torch SDPA with the causal + left-padding mask built once per pass;
- decode's row-wise pieces (residual add + norm, rotary, SiLU * up) as functions that the
  `compile` setting hands to torch.compile (compiled_step.py; off: the same code eagerly).

Memory: with plain weights (float32, or no oneDNN) the fused tensors take the place of the
module's q/k/v and gate/up weights (those become views into them): no copy. With prepacked
bf16 linears (cpu_linear.py) the fused weights are packed once and the modules' own packed
copies of q/k/v/gate/up are dropped, so the model holds what prepacking held before.

Only models `unsupported_reason` accepts take this path; the runner keeps transformers'
forward for the rest (and as the `fast_path=False` setting).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .compiled_step import StepPieces, rms
from .cpu_linear import can_prepack, packed_linear
from .shape_grid import ShapeGrid

EAGER = StepPieces("off")  # the decode pieces run eagerly (no compile setting)

# Rope types whose cos/sin depend only on the position (a table can be built once).
_TABLE_ROPE_TYPES = {"default", "linear", "llama3", "yarn"}


def _text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def unsupported_reason(model) -> str | None:
    """None when the lean step computes this model exactly; else why not (logged)."""
    if type(model).__name__ != "LlamaForCausalLM":
        return f"{type(model).__name__} is not LlamaForCausalLM"
    cfg = _text_config(model)
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act}"
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in _TABLE_ROPE_TYPES:
        return f"rope type {rope_type}"
    return None


def _plain_linear(weight: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, bias)

    return forward


class _Layer:
    __slots__ = ("ln1", "ln2", "eps1", "eps2", "qkv", "o", "gate_up", "down")


def lean_step_for(model) -> "LeanLlama | None":
    """The model's lean step (built once per model object and kept on it: building it
    re-lays the weights), or None when the model is not one it computes exactly."""
    lean = getattr(model, "_bucketserve_lean", None)
    if lean is None and unsupported_reason(model) is None:
        lean = LeanLlama(model, pack=can_prepack(model))
        model._bucketserve_lean = lean
    return lean


class LeanLlama:
    """Callable as `lean(ids, mask, pos, kv, r0, r1, write_at, decode, pieces, grid)` ->
    last-position logits. Decode runs its row-wise parts through `pieces` (compiled_step.py:
    eager or compiled), padded to `grid`'s batch sizes when the pieces have static shapes."""

    def __init__(self, model, pack: bool):
        cfg = _text_config(model)
        inner = model.model
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.inter = cfg.intermediate_size
        self.scaling = self.head_dim**-0.5
        self.embed = inner.embed_tokens.weight
        self.dtype = self.embed.dtype
        self.packed_bytes = 0  # bytes of packed weight copies this object holds
        self.layers: list[_Layer] = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            L = _Layer()
            L.ln1, L.eps1 = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
            L.ln2, L.eps2 = layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon
            L.qkv = self._fuse([a.q_proj, a.k_proj, a.v_proj], pack)
            L.o = self._single(a.o_proj, pack)
            L.gate_up = self._fuse([m.gate_proj, m.up_proj], pack)
            L.down = self._single(m.down_proj, pack)
            self.layers.append(L)
        self.norm, self.norm_eps = inner.norm.weight, inner.norm.variance_epsilon
        self.lm_head = self._single(model.lm_head, pack)
        self._rotary = inner.rotary_emb
        self.sdpa_decode = True  # False: attention.py's matmul-softmax-matmul (benchmarks compare them)
        self._cos = self._sin = None
        self._table_len = 0

    # -- weights -----------------------------------------------------------------------------
    def _fuse(self, linears, pack: bool):
        """One matmul for several linears that read the same input. Unpacked: the modules'
        weights become views of the fused tensor (no extra memory). Packed: the fused weight
        is packed and the modules' own packed copies are dropped (they fall back to F.linear
        on their plain weights, which only transformers' forward still uses)."""
        weight = torch.cat([m.weight.detach() for m in linears])
        biases = [m.bias for m in linears]
        bias = torch.cat([b.detach() for b in biases]) if all(b is not None for b in biases) else None
        if any(b is not None for b in biases) and bias is None:
            bias = torch.cat([b.detach() if b is not None else torch.zeros(m.out_features, dtype=weight.dtype,
                              device=weight.device) for m, b in zip(linears, biases)])
        if pack:
            for m in linears:
                m.__dict__.pop("forward", None)  # drop cpu_linear's packed copy
            fn, nbytes = packed_linear(weight, bias)
            self.packed_bytes += nbytes
            return fn
        at = 0
        for m in linears:
            n = m.out_features
            m.weight.data = weight[at : at + n]
            at += n
        return _plain_linear(weight, bias)

    def _single(self, linear, pack: bool):
        own = linear.__dict__.get("forward")
        if own is not None:  # already packed by cpu_linear.prepack_linears: reuse that copy
            return own
        if pack:
            fn, nbytes = packed_linear(linear.weight, linear.bias)
            self.packed_bytes += nbytes
            return fn
        return _plain_linear(linear.weight, linear.bias)

    # -- rotary ------------------------------------------------------------------------------
    def _rope(self, pos: torch.Tensor):
        """cos and sign-folded sin for these positions, [B, T, 1, head_dim]."""
        need = int(pos.max()) + 1
        if need > self._table_len:
            n = max(need, 2 * self._table_len, 256)
            ids = torch.arange(n, device=self.embed.device).unsqueeze(0)
            cos, sin = self._rotary(self.embed[:1].unsqueeze(0), ids)
            half = self.head_dim // 2
            sign = torch.ones(self.head_dim, dtype=sin.dtype, device=sin.device)
            sign[:half] = -1
            self._cos, self._sin = cos[0].contiguous(), (sin[0] * sign).contiguous()
            self._table_len = n
        return self._cos[pos].unsqueeze(2), self._sin[pos].unsqueeze(2)

    # -- the step --------------------------------------------------------------------------------
    def __call__(self, ids, mask, pos, kv, r0: int, r1: int, write_at: int, decode: bool,
                 pieces: StepPieces = EAGER, grid: ShapeGrid | None = None) -> torch.Tensor:
        if decode and ids.shape[1] == 1:
            if pieces.compiled:
                try:
                    out = pieces.run(self, ids, mask, pos, kv, r0, r1, write_at, grid)
                    pieces.stats.calls += 1
                    return out
                except Exception as exc:  # noqa: BLE001 - a compile/run failure: eager for good
                    pieces.give_up(exc)  # the eager step below rewrites the same KV columns
            if not self.sdpa_decode:  # the matmul-softmax-matmul reference (benchmarks compare)
                return self._decode(ids, mask, pos, kv, r0, r1, write_at, EAGER, None)
        return self.mixed([Segment(ids, mask, pos, kv, r0, r1, write_at, cached=decode)])[0]

    def mixed(self, segments: list["Segment"]) -> list[torch.Tensor]:
        """Each segment's last-position logits ([rows, vocab]) from one pass. The token-wise work
        (embedding, norms, matmuls, rotary, MLP) runs once over every segment's tokens together,
        so a step that decodes the batch and prefills prompt chunks reads the weights once;
        only the KV writes and attention go segment by segment."""
        nh, nkv, d = self.heads, self.kv_heads, self.head_dim
        ids = torch.cat([s.ids.reshape(-1) for s in segments])
        pos = torch.cat([s.pos.reshape(-1) for s in segments])
        n = ids.numel()
        h = F.embedding(ids, self.embed).unsqueeze(0)  # [1, N, H]
        cos, sin = self._rope(pos.view(1, n))
        plans, at = [], 0
        for s in segments:
            plans.append(_AttentionPlan.of(s, at, self.dtype))
            at += s.ids.numel()
        add_rms, rope, swiglu = EAGER.add_rms, EAGER.rope, EAGER.swiglu
        x = rms(h, self.layers[0].ln1, self.layers[0].eps1)
        delta = None
        for li, L in enumerate(self.layers):
            if delta is not None:  # the previous layer's residual add, fused with this norm
                h, x = add_rms(h, delta, L.ln1, L.eps1)
            qkv = L.qkv(x).view(1, n, nh + 2 * nkv, d)
            qk = rope(qkv, cos, sin, nh + nkv, d // 2)  # [1, N, nh+nkv, d]
            att = [self._attend(p, li, qk, qkv) for p in plans]
            h, x = add_rms(h, L.o(att[0] if len(att) == 1 else torch.cat(att, dim=1)), L.ln2, L.eps2)
            delta = L.down(swiglu(L.gate_up(x), self.inter))
        last = torch.cat([p.last for p in plans])
        logits = self.lm_head(rms(h[0, last] + delta[0, last], self.norm, self.norm_eps))
        return list(logits.split([p.rows for p in plans]))

    def _attend(self, p: "_AttentionPlan", li: int, qk: torch.Tensor, qkv: torch.Tensor) -> torch.Tensor:
        """Write one segment's new keys and values into its KV buffer and attend; [1, R*T, nh*d]."""
        nh, nkv, d = self.heads, self.kv_heads, self.head_dim
        s, R, T = p.segment, p.rows, p.tokens
        qk = qk[0, p.offset : p.offset + R * T].view(R, T, nh + nkv, d)
        v_new = qkv[0, p.offset : p.offset + R * T, nh + nkv :].view(R, T, nkv, d)
        kb, vb = s.kv.keys[li], s.kv.values[li]
        w = s.write_at
        kb[s.r0 : s.r1, :, w : w + T].copy_(qk[:, :, nh:].transpose(1, 2))
        vb[s.r0 : s.r1, :, w : w + T].copy_(v_new.transpose(1, 2))
        if s.cached:
            k, v = kb[s.r0 : s.r1, :, p.c0 : w + T], vb[s.r0 : s.r1, :, p.c0 : w + T]
        else:
            k, v = qk[:, :, nh:].transpose(1, 2), v_new.transpose(1, 2)
        if T == 1 and s.cached:
            # A decode row: its query heads, grouped under their KV head, are the "query length"
            # of one SDPA call (no repeat of K/V; faster than enable_gqa here, docs/benchmarks.md).
            # One fused kernel over the strided window [c0, end] of the buffer, no copy.
            q = qk[:, 0, :nh].reshape(R, nkv, nh // nkv, d)
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=p.mask, scale=self.scaling)
        else:
            q = qk[:, :, :nh].transpose(1, 2)  # [R, nh, T, d]
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=p.mask, scale=self.scaling,
                                                 enable_gqa=nh > nkv).transpose(1, 2)
        return att.reshape(1, R * T, nh * d)

    def _decode(self, ids, mask, pos, kv, r0, r1, write_at, pieces: StepPieces, grid: ShapeGrid | None):
        """One token per row. With a grid the batch is padded to the grid's size: dummy rows
        (pad token, position 0) go through the row-wise parts only, never attention or the
        KV cache, and their logits are dropped."""
        B = ids.shape[0]
        Bp = grid.rows_for(B) if grid is not None else B
        if Bp > B:
            ids = F.pad(ids, (0, 0, 0, Bp - B))
            pos = F.pad(pos, (0, 0, 0, Bp - B))
        nh, nkv, d = self.heads, self.kv_heads, self.head_dim
        g = nh // nkv
        h = F.embedding(ids, self.embed)  # [Bp, 1, H]
        cos, sin = self._rope(pos)
        # mask: [B, C] bool over the rows' whole buffer. Attention reads only the columns
        # some row uses, [start, end] (rounded to the grid's column step), and takes the
        # padding mask as an additive bias.
        c1 = write_at + 1
        c0 = grid.window_start(kv.start, c1) if grid is not None else kv.start
        bias = torch.zeros((B, c1 - c0), dtype=self.dtype, device=h.device)
        bias.masked_fill_(~mask[:, c0:c1], float("-inf"))
        bias = bias.view(B, 1, 1, -1)
        if not self.sdpa_decode:
            full_bias = torch.zeros(mask.shape, dtype=torch.float32, device=h.device)
            full_bias = full_bias.masked_fill_(~mask, float("-inf")).view(B, 1, 1, -1)
        x = rms(h, self.layers[0].ln1, self.layers[0].eps1)
        delta = None
        for li, L in enumerate(self.layers):
            if delta is not None:  # the previous layer's residual add, fused with this norm
                h, x = pieces.add_rms(h, delta, L.ln1, L.eps1)
            qkv = L.qkv(x).view(Bp, 1, nh + 2 * nkv, d)
            qk = pieces.rope(qkv, cos, sin, nh + nkv, d // 2)  # [Bp, 1, nh+nkv, d]
            kb, vb = kv.keys[li], kv.values[li]
            kb[r0:r1, :, write_at:c1].copy_(qk[:B, :, nh:].transpose(1, 2))
            vb[r0:r1, :, write_at:c1].copy_(qkv[:B, :, nh + nkv :].transpose(1, 2))
            if not self.sdpa_decode:
                q = qk[:B, 0, :nh].reshape(B, nkv, g, d)
                s = torch.matmul(q, kb[r0:r1].transpose(-1, -2)).float()  # [B, nkv, g, C]
                s.mul_(self.scaling).add_(full_bias)
                p = torch.softmax(s, dim=-1).to(self.dtype)
                att = torch.matmul(p, vb[r0:r1]).view(B, 1, nh * d)
            else:
                # One fused SDPA kernel over the strided window (no copy of K/V): on 2 cores
                # it beat matmul-softmax-matmul (attention.py) by 1.3-3x, most on a busy machine.
                q = qk[:B, :, :nh].transpose(1, 2)  # [B, nh, 1, d]
                att = F.scaled_dot_product_attention(q, kb[r0:r1, :, c0:c1], vb[r0:r1, :, c0:c1], attn_mask=bias,
                                                     scale=self.scaling, enable_gqa=g > 1)
                att = att.reshape(B, 1, nh * d)
            if Bp > B:
                att = F.pad(att, (0, 0, 0, 0, 0, Bp - B))
            h, x = pieces.add_rms(h, L.o(att), L.ln2, L.eps2)
            delta = L.down(pieces.swiglu(L.gate_up(x), self.inter))
        last = rms((h[:B] + delta[:B])[:, -1], self.norm, self.norm_eps)
        return self.lm_head(last)

    @torch.inference_mode()
    def warm_up(self, pieces: StepPieces, sizes) -> None:
        """Compile the pieces for these batch sizes now, with inputs made the way the decode
        step makes them (same shapes, strides and dtypes: no recompile at the first step)."""
        nh, nkv, d = self.heads, self.kv_heads, self.head_dim
        L = self.layers[0]
        for b in sizes:
            if not pieces.compiled:
                return
            t0 = time.perf_counter()
            try:
                pos = torch.zeros((b, 1), dtype=torch.long, device=self.embed.device)
                h = F.embedding(pos, self.embed)
                cos, sin = self._rope(pos)
                x = rms(h, L.ln1, L.eps1)
                pieces.rope(L.qkv(x).view(b, 1, nh + 2 * nkv, d), cos, sin, nh + nkv, d // 2)
                att = torch.zeros((b, 1, nh * d), dtype=self.dtype, device=h.device)
                h, x = pieces.add_rms(h, L.o(att), L.ln2, L.eps2)
                pieces.swiglu(L.gate_up(x), self.inter)
            except Exception as exc:  # noqa: BLE001
                pieces.give_up(exc)
                return
            pieces.stats.seconds += time.perf_counter() - t0
            pieces.stats.shapes += 1


@dataclass
class Segment:
    """A part of one forward pass: rows [r0, r1) of `kv` (the batch's KV or a staging KV), T new
    tokens each (`ids`, `pos`: [R, T]), written from column `write_at`. cached: the rows also
    attend to what the buffer holds before write_at (a decode step, a later chunk of a prompt;
    `mask` [R, columns] over the whole buffer); else a fresh prefill (`mask` [R, T], True on
    real tokens, left padding)."""

    ids: torch.Tensor
    mask: torch.Tensor
    pos: torch.Tensor
    kv: object
    r0: int
    r1: int
    write_at: int
    cached: bool


@dataclass
class _AttentionPlan:
    """What a segment's attention needs in every layer, built once per pass."""

    segment: Segment
    offset: int  # its first token in the pass's flat token order
    rows: int
    tokens: int
    c0: int  # first buffer column attended (cached)
    mask: torch.Tensor  # decode: additive bias [R, 1, 1, C]; else bool [R, 1, T, C]
    last: torch.Tensor  # flat indices of each row's last token

    @classmethod
    def of(cls, s: Segment, offset: int, dtype) -> "_AttentionPlan":
        R, T = s.ids.shape
        dev = s.ids.device
        last = offset + torch.arange(R, device=dev) * T + (T - 1)
        end = s.write_at + T
        c0 = s.kv.start if s.cached else s.write_at
        if s.cached and T == 1:
            # Attention reads only the columns some row uses, [start, end], with the padding
            # mask as an additive bias (one per step, shared by every layer).
            bias = torch.zeros((R, end - c0), dtype=dtype, device=dev)
            bias.masked_fill_(~s.mask[:, c0:end], float("-inf"))
            return cls(s, offset, R, T, c0, bias.view(R, 1, 1, -1), last)
        if s.cached:  # a chunk over a cached prefix: the prefix, and itself causally
            cols = torch.arange(c0, end, device=dev)
            later = cols.unsqueeze(0) > torch.arange(s.write_at, end, device=dev).unsqueeze(1)  # [T, C]
            return cls(s, offset, R, T, c0, s.mask[:, c0:end].view(R, 1, 1, -1) & ~later.view(1, 1, T, -1), last)
        # Causal over the T new tokens, minus left padding; a padding query sees itself (never a
        # fully masked row: SDPA would give NaN there, and its key is masked for every real
        # token anyway).
        causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril_()
        mask = (causal & s.mask.view(R, 1, 1, T)) | torch.eye(T, dtype=torch.bool, device=dev)
        return cls(s, offset, R, T, c0, mask, last)
