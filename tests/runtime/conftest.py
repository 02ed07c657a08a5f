"""Shared fixtures: the tiny random Llama (built once under the model cache) in float32."""

from __future__ import annotations

import pytest
import torch

from bucket_scheduler.runtime.models import load_model, prepare_tiny


@pytest.fixture(scope="session")
def tiny_dir():
    return prepare_tiny()


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """(model, tokenizer) in float32 on CPU, one intra-op thread (the tiny model gains
    nothing from more, and a busy second core makes OpenMP spin-waits slow)."""
    torch.set_num_threads(1)
    return load_model(tiny_dir, torch.float32, "cpu")
