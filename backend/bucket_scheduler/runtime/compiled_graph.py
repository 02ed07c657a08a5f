"""The whole lean decode step as one inductor graph per shape-grid batch size.

compiled_step.py compiles only the row-wise pieces between the eager matmuls. Here every
layer's norms, matmuls, rotary and activation are one graph: the weights go in plain (the
model's own tensors, no copy) and inductor's freezing pass folds them into constants and
packs them for oneDNN / MKL itself; the Python loop over 30 layers and its dispatch are gone.

What cannot be in a static graph is the KV cache: its buffers change shape when they are
reallocated and the attention window [start, end] moves every step. So attention plus the
KV write is one opaque custom op (`bucketserve::decode_attention`) that inductor calls as an
extern kernel; it reads the buffers, the window and the padding bias from the step's state
(set just before the graph runs), so the graph's inputs are only the token ids and the
rotary cos/sin: shapes that depend on the grid batch size alone. Dummy rows (grid padding)
skip attention and the KV write, as in the eager step.

Memory: frozen constants are packed copies of the weights held by the compiled graph (per
shape graph, see docs/benchmarks.md); the eager step's own packed weights stay (prefill).
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from .compiled_step import CompileStats, give_up_log, raise_recompile_limit, rms

_STEP: dict = {}  # the running decode step's KV state, read by decode_attention (one engine thread)


@torch.library.custom_op("bucketserve::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
    """Write the real rows' new k/v at column `write_at`, attend over the window; [Bp, 1, nh*d]."""
    s = _STEP
    Bp, _, nh, d = q.shape
    B = s["rows"]
    out = q.new_zeros((Bp, 1, nh * d))
    if B == 0:  # warm-up: no real rows
        return out
    kv, r0, r1, w, c0 = s["kv"], s["r0"], s["r1"], s["write_at"], s["c0"]
    kb, vb = kv.keys[layer], kv.values[layer]
    kb[r0:r1, :, w : w + 1].copy_(k[:B].transpose(1, 2))
    vb[r0:r1, :, w : w + 1].copy_(v[:B].transpose(1, 2))
    att = F.scaled_dot_product_attention(q[:B].transpose(1, 2), kb[r0:r1, :, c0 : w + 1], vb[r0:r1, :, c0 : w + 1],
                                         attn_mask=s["bias"], scale=s["scale"], enable_gqa=nh != k.shape[2])
    out[:B] = att.reshape(B, 1, nh * d)
    return out


@decode_attention.register_fake
def _(q, k, v, layer):
    return q.new_empty((q.shape[0], 1, q.shape[2] * q.shape[3]))


class _DecodeModule(nn.Module):
    """The decode step over the model's own weight tensors (registered as frozen parameters)."""

    def __init__(self, lean, model):
        super().__init__()
        inner = model.model
        self.nh, self.nkv, self.d, self.half = lean.heads, lean.kv_heads, lean.head_dim, lean.head_dim // 2
        self.eps1 = [layer.input_layernorm.variance_epsilon for layer in inner.layers]
        self.eps2 = [layer.post_attention_layernorm.variance_epsilon for layer in inner.layers]
        self.norm_eps = inner.norm.variance_epsilon

        def frozen(t):
            return nn.Parameter(t.detach(), requires_grad=False)

        def plist(get):
            return nn.ParameterList([frozen(get(layer)) for layer in inner.layers])

        self.embed = frozen(inner.embed_tokens.weight)
        self.ln1 = plist(lambda layer: layer.input_layernorm.weight)
        self.ln2 = plist(lambda layer: layer.post_attention_layernorm.weight)
        self.wq = plist(lambda layer: layer.self_attn.q_proj.weight)
        self.wk = plist(lambda layer: layer.self_attn.k_proj.weight)
        self.wv = plist(lambda layer: layer.self_attn.v_proj.weight)
        self.wo = plist(lambda layer: layer.self_attn.o_proj.weight)
        self.wg = plist(lambda layer: layer.mlp.gate_proj.weight)
        self.wu = plist(lambda layer: layer.mlp.up_proj.weight)
        self.wd = plist(lambda layer: layer.mlp.down_proj.weight)
        self.norm = frozen(inner.norm.weight)
        self.head = frozen(model.lm_head.weight)

    def _rotate(self, x, cos, sin):
        return x * cos + torch.roll(x, self.half, dims=-1) * sin

    def forward(self, ids, cos, sin):
        Bp = ids.shape[0]
        h = F.embedding(ids, self.embed)  # [Bp, 1, H]
        for li in range(len(self.wq)):
            x = rms(h, self.ln1[li], self.eps1[li])
            q = self._rotate(F.linear(x, self.wq[li]).view(Bp, 1, self.nh, self.d), cos, sin)
            k = self._rotate(F.linear(x, self.wk[li]).view(Bp, 1, self.nkv, self.d), cos, sin)
            v = F.linear(x, self.wv[li]).view(Bp, 1, self.nkv, self.d)
            h = h + F.linear(torch.ops.bucketserve.decode_attention(q, k, v, li), self.wo[li])
            x = rms(h, self.ln2[li], self.eps2[li])
            h = h + F.linear(F.silu(F.linear(x, self.wg[li])) * F.linear(x, self.wu[li]), self.wd[li])
        return F.linear(rms(h[:, -1], self.norm, self.norm_eps), self.head)


class DecodeGraph:
    """The `compile=inductor-graph` step: same interface as compiled_step.StepPieces."""

    @property
    def static_shapes(self) -> bool:
        return self.compiled

    def __init__(self, lean, model):
        import torch._inductor.config as inductor_config

        self.mode = "inductor-graph"
        self.stats = CompileStats()
        self.compiled = True
        inductor_config.freezing = True  # weights become packed constants of the graph
        raise_recompile_limit()
        try:
            self.module = _DecodeModule(lean, model).eval()
            self.fn = torch.compile(self.module, dynamic=False, fullgraph=True)
        except Exception as exc:  # noqa: BLE001
            self.give_up(exc)

    def give_up(self, exc: BaseException) -> None:
        give_up_log(self.stats, exc)
        self.compiled = False

    def run(self, lean, ids, mask, pos, kv, r0, r1, write_at, grid):
        B = ids.shape[0]
        Bp = grid.rows_for(B)
        if Bp > B:
            ids = F.pad(ids, (0, 0, 0, Bp - B))
            pos = F.pad(pos, (0, 0, 0, Bp - B))
        cos, sin = lean._rope(pos)
        c1 = write_at + 1
        c0 = grid.window_start(kv.start, c1)
        bias = torch.zeros((B, c1 - c0), dtype=lean.dtype, device=ids.device)
        bias.masked_fill_(~mask[:, c0:c1], float("-inf"))
        _STEP.update(rows=B, kv=kv, r0=r0, r1=r1, write_at=write_at, c0=c0, bias=bias.view(B, 1, 1, -1),
                     scale=lean.scaling)
        try:
            return self.fn(ids, cos, sin)[:B]
        finally:
            _STEP.clear()

    @torch.inference_mode()
    def warm_up(self, lean, sizes) -> None:
        for b in sizes:
            if not self.compiled:
                return
            t0 = time.perf_counter()
            try:
                pos = torch.zeros((b, 1), dtype=torch.long, device=lean.embed.device)
                cos, sin = lean._rope(pos)
                _STEP.update(rows=0)
                self.fn(pos, cos, sin)
            except Exception as exc:  # noqa: BLE001
                self.give_up(exc)
                return
            finally:
                _STEP.clear()
            self.stats.seconds += time.perf_counter() - t0
            self.stats.shapes += 1
