"""The one request validator: a GenerationRequest checked against an EngineConfig, for every
entry point (the Triton model after serving/validation.py decoded the tensors, Engine.submit for
in-process callers and benchmarks). Every message names the field first ("temperature: ..."),
spelled as the caller's API does (`names`: Triton calls the prompt `text_input`), so a frontend
can map it back. Pure; check_length runs once the prompt is tokenized."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Mapping

from .api import EngineConfig, GenerationRequest, InvalidRequest

MAX_STOP_STRINGS = 16
MAX_STOP_LEN = 256
MAX_SEED = 2**63 - 1
MAX_TEMPERATURE = 100.0
MAX_SLO_MS = 3.6e6  # one hour
# A prompt longer than max_model_len * this many UTF-8 bytes cannot fit max_model_len tokens (the
# longest SmolLM2 token is 81 bytes), so it is refused before tokenizing: a multi-megabyte prompt
# would otherwise hold the caller for seconds (16 MiB: about a minute on 2 CPU cores).
MAX_PROMPT_BYTES_PER_TOKEN = 128
REQUEST_CLASSES = ("online", "offline")
COMPILE_MODES = ("off", "inductor", "inductor-dynamic", "cudagraphs", "inductor-graph")  # runtime/compiled_step.py


def validate_config(cfg: EngineConfig) -> None:
    """Engine settings that no request could work around."""
    if not 0.0 < cfg.offline_queue_fraction <= 1.0:
        raise ValueError("offline_queue_fraction must be in (0, 1]")
    if cfg.max_model_len < 2 or cfg.max_num_seqs < 1:
        raise ValueError("max_model_len must be >= 2 and max_num_seqs >= 1")
    if cfg.default_max_tokens < 1:
        raise ValueError("default_max_tokens must be >= 1")
    if cfg.compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}; got {cfg.compile!r}")


def validate_request(req: GenerationRequest, cfg: EngineConfig,
                     names: Mapping[str, str] | None = None) -> GenerationRequest:
    """Raise InvalidRequest naming the first bad field; else return the request with defaults
    filled in (max_tokens None -> default_max_tokens) and stop as a list."""
    names = names or {}

    def bad(field: str, what: str) -> InvalidRequest:
        return InvalidRequest(f"{names.get(field, field)}: {what}")

    if not isinstance(req.request_id, str) or not req.request_id:
        raise bad("request_id", "must be a non-empty string")
    prompt = req.prompt
    if not isinstance(prompt, str):
        raise bad("prompt", f"expected a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise bad("prompt", "must not be empty")
    if "\x00" in prompt:
        raise bad("prompt", "must not contain NUL characters")
    max_bytes = cfg.max_model_len * MAX_PROMPT_BYTES_PER_TOKEN
    size = len(prompt.encode("utf-8"))
    if size > max_bytes:
        raise bad("prompt", f"{size} bytes is too long: at most {max_bytes} bytes (max_model_len "
                            f"{cfg.max_model_len} tokens x {MAX_PROMPT_BYTES_PER_TOKEN}); shorten the prompt")

    s = req.sampling
    max_tokens = cfg.default_max_tokens if s.max_tokens is None else s.max_tokens
    if not _int(max_tokens) or not 1 <= max_tokens <= cfg.max_model_len:
        raise bad("max_tokens", f"must be between 1 and max_model_len ({cfg.max_model_len}), got {max_tokens!r}")
    if not _number(s.temperature) or not 0.0 <= s.temperature <= MAX_TEMPERATURE:
        raise bad("temperature", f"must be between 0 and {MAX_TEMPERATURE:g} (0 = greedy), got {s.temperature!r}")
    if not _int(s.top_k) or s.top_k < 0:
        raise bad("top_k", f"must be an integer >= 0 (0 = off), got {s.top_k!r}")
    if not _number(s.top_p) or not 0.0 < s.top_p <= 1.0:
        raise bad("top_p", f"must be in (0, 1], got {s.top_p!r}")
    if s.seed is not None and (not _int(s.seed) or not 0 <= s.seed <= MAX_SEED):
        raise bad("seed", f"must be between 0 and {MAX_SEED}, got {s.seed!r}")
    stop = list(s.stop or [])
    if len(stop) > MAX_STOP_STRINGS:
        raise bad("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}")
    if not all(isinstance(x, str) and x for x in stop):
        raise bad("stop", "must be a list of non-empty strings")
    if any(len(x) > MAX_STOP_LEN for x in stop):
        raise bad("stop", f"each stop string must be at most {MAX_STOP_LEN} characters")
    if not _int(s.min_tokens) or not 0 <= s.min_tokens <= max_tokens:
        raise bad("min_tokens", f"must be between 0 and max_tokens ({max_tokens}), got {s.min_tokens!r}")
    if req.req_class not in REQUEST_CLASSES:
        raise bad("req_class", f"must be one of {list(REQUEST_CLASSES)}, got {req.req_class!r}")
    if not _int(req.priority) or not -(2**31) <= req.priority < 2**31:
        raise bad("priority", f"must fit in a 32-bit integer, got {req.priority!r}")
    for name in ("slo_ttft_ms", "slo_tpot_ms"):
        v = getattr(req, name)
        if v is not None and (not _number(v) or not 0.0 < v <= MAX_SLO_MS):
            raise bad(name, f"must be a positive number of milliseconds (at most one hour), got {v!r}")
    if max_tokens == s.max_tokens and stop == s.stop:
        return req
    return replace(req, sampling=replace(s, max_tokens=max_tokens, stop=stop))


def check_length(prompt_tokens: int, max_tokens: int, cfg: EngineConfig) -> None:
    """The encoded prompt plus max_tokens must fit max_model_len."""
    if prompt_tokens < 1:
        raise InvalidRequest("prompt: encodes to zero tokens; send some text")
    if prompt_tokens + max_tokens > cfg.max_model_len:
        room = cfg.max_model_len - prompt_tokens
        field, fix = ("max_tokens", f"lower max_tokens to at most {room}") if room >= 1 else ("prompt", "shorten the prompt")
        raise InvalidRequest(f"{field}: prompt is {prompt_tokens} tokens and max_tokens {max_tokens}: together more "
                             f"than max_model_len {cfg.max_model_len}; {fix}")


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
