"""The lean step (fast_step.py) really runs and computes what transformers' forward computes:
same schedule through two runners, one per path; fp32 logits within 1e-4 at every step and
identical greedy tokens. Plus: it holds no weight copy beyond what prepacking held, and other
architectures keep transformers' forward."""

from __future__ import annotations

import random

import pytest
import torch

from bucket_scheduler.runtime.cpu_linear import prepack_linears
from bucket_scheduler.runtime.fast_step import lean_step_for
from bucket_scheduler.runtime.models import load_model
from bucket_scheduler.runtime.runner import Runner

from .helpers import make_seq, random_prompts

TOL = 1e-4


def run_schedule(model, tok, prompts, max_tokens, fast_path, seed=0):
    """Admit in groups while others decode, drop one mid-flight; every row's logits, every step."""
    rng = random.Random(seed)
    logits: dict[str, list[torch.Tensor]] = {}
    runner = Runner(model, tok, fast_path=fast_path, max_prefill_tokens=64,
                    on_logits=lambda s, row: logits.setdefault(s.request_id, []).append(row))
    seqs = [make_seq(tok, f"r{i}", p, m) for i, (p, m) in enumerate(zip(prompts, max_tokens))]
    pending = list(seqs)
    while pending or runner.rows:
        for s in [s for s in runner.rows if s.finished]:
            runner.remove(s.request_id)
        if pending and (not runner.rows or rng.random() < 0.3):
            take, pending = pending[:3], pending[3:]
            runner.prefill(take)
        if len(runner.rows) > 2 and rng.random() < 0.05:
            runner.remove(runner.rows[1].request_id)
        if runner.rows:
            runner.decode()
    return {s.request_id: s.output_ids for s in seqs}, logits, runner


def compare(model, tok, prompts, max_tokens):
    hf_ids, hf_logits, hf_runner = run_schedule(model, tok, prompts, max_tokens, fast_path=False)
    lean_ids, lean_logits, lean_runner = run_schedule(model, tok, prompts, max_tokens, fast_path=True)
    assert hf_runner.lean is None and hf_runner.lean_calls == 0
    assert lean_runner.lean is not None
    # Every prefill group and every decode step went through the lean step.
    c = lean_runner.counters
    assert lean_runner.lean_calls == c.prefill_calls + c.decode_calls > 0
    assert lean_ids == hf_ids
    worst = max((a - b).abs().max().item() for rid in hf_logits for a, b in zip(hf_logits[rid], lean_logits[rid]))
    assert sum(len(v) for v in lean_logits.values()) == sum(len(v) for v in hf_logits.values())
    return worst


@pytest.mark.parametrize("sdpa_decode", [True, False])
def test_lean_step_equals_transformers_tiny(tiny, sdpa_decode):
    model, tok = tiny
    lean = lean_step_for(model)
    prompts = random_prompts(model.config.vocab_size, 9, seed=4, lo=1, hi=40)
    lean.sdpa_decode = sdpa_decode
    try:
        worst = compare(model, tok, prompts, [random.Random(i).randint(1, 30) for i in range(len(prompts))])
    finally:
        lean.sdpa_decode = True
    assert worst <= TOL, worst


@pytest.mark.slow
def test_lean_step_equals_transformers_smollm2():
    from bucket_scheduler.runtime.models import resolve_model

    torch.set_num_threads(2)
    model, tok = load_model(resolve_model(None), torch.float32, "cpu")
    prompts = random_prompts(model.config.vocab_size, 5, seed=9, lo=3, hi=60)
    try:
        worst = compare(model, tok, prompts, [12, 3, 20, 8, 15])
    finally:
        torch.set_num_threads(1)
    assert worst <= TOL, worst


def _ptrs(model, names):
    return {n: p.untyped_storage().data_ptr() for n, p in model.named_parameters() if any(k in n for k in names)}


def test_fp32_fused_weights_are_the_model_weights(tiny_dir):
    """Unpacked: q/k/v and gate/up become views of the fused tensors; no new weight memory."""
    model, _ = load_model(tiny_dir, torch.float32, "cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lean = lean_step_for(model)
    assert lean is not None and lean.packed_bytes == 0
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        assert a.q_proj.weight.untyped_storage().data_ptr() == a.v_proj.weight.untyped_storage().data_ptr()
        assert m.gate_proj.weight.untyped_storage().data_ptr() == m.up_proj.weight.untyped_storage().data_ptr()
    for n, p in model.named_parameters():  # same values, transformers' forward unchanged
        assert torch.equal(p, before[n]), n
    assert lean_step_for(model) is lean  # built once per model


def test_bf16_packed_holds_what_prepacking_held(tiny_dir):
    """Packed bf16: the fused packed weights replace the modules' own packed q/k/v, gate/up
    copies (dropped), o/down/lm_head reuse theirs."""
    model, _ = load_model(tiny_dir, torch.bfloat16, "cpu")
    if prepack_linears(model) == 0:
        pytest.skip("no oneDNN packing in this torch build")
    lean = lean_step_for(model)
    fused = 0
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        for lin in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj):
            assert "forward" not in lin.__dict__  # its packed copy is gone
            fused += lin.weight.nbytes
        assert "forward" in a.o_proj.__dict__ and "forward" in m.down_proj.__dict__
    assert lean.packed_bytes == fused


def test_other_architectures_keep_transformers_forward(tiny_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_dir)
    config.hidden_act = "gelu"  # not what the lean step computes
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert lean_step_for(model) is None
