"""Turn one Triton request's inputs and parameters into a GenerationRequest, or say what to fix.

Triton checks declared dtypes, but not a python model's required inputs, nor values: that
happens here. Every field may come as an input tensor (Triton LLM names) or as a request
parameter (the generate endpoint puts JSON keys that are not inputs there; gRPC clients can
set them too). An input wins over a parameter of the same name.

Pure: numpy in, dataclasses out, no Triton import, so it is unit-tested directly.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from bucket_scheduler.runtime.api import EngineConfig, GenerationRequest, InvalidRequest, SamplingParams

MAX_STOP_STRINGS = 16
MAX_STOP_LEN = 256
MAX_SEED = 2**63 - 1
# A prompt longer than max_model_len * this many UTF-8 bytes cannot fit max_model_len tokens (the
# longest SmolLM2 token is 81 bytes), so it is refused before tokenizing: a multi-megabyte prompt
# would otherwise hold execute() for seconds (16 MiB: about a minute on 2 CPU cores).
MAX_PROMPT_BYTES_PER_TOKEN = 128
REQUEST_CLASSES = ("online", "offline")

# name -> kind; the order is the order of the docs' table.
FIELDS = {
    "text_input": "str",
    "max_tokens": "int",
    "stream": "bool",
    "temperature": "float",
    "top_k": "int",
    "top_p": "float",
    "seed": "int",
    "stop": "str_list",
    "ignore_eos": "bool",
    "min_tokens": "int",
    "exclude_input_in_output": "bool",
    "request_class": "str",
    "priority": "int",
    "slo_ttft_ms": "float",
    "slo_tpot_ms": "float",
    "apply_chat_template": "bool",
}
# Parameters some clients add on their own; not ours to judge.
IGNORED_PARAMETERS_PREFIX = ("triton_", "sequence_", "priority_", "timeout", "binary_data", "headers")


def _bad(name: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"{name}: {what}")


def _decode(name: str, value: Any) -> str:
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(name, "is not valid UTF-8 text") from None
    if isinstance(value, str):
        return value
    raise _bad(name, f"expected a string, got {type(value).__name__}")


def _scalar(name: str, value: Any) -> Any:
    """A tensor of exactly one element (shape [1], [1,1] or []) -> that element."""
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise _bad(name, f"expected one value, got shape {list(value.shape)}")
        return value.reshape(-1)[0]
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise _bad(name, f"expected one value, got {len(value)}")
        return value[0]
    return value


def _as_int(name: str, value: Any) -> int:
    value = _scalar(name, value)
    if isinstance(value, (bool, np.bool_)):
        raise _bad(name, "expected an integer, got a boolean")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    if isinstance(value, (str, bytes, np.bytes_)):
        text = _decode(name, value).strip()
        try:
            return int(text)
        except ValueError:
            pass
    raise _bad(name, f"expected an integer, got {value!r}")


def _as_float(name: str, value: Any) -> float:
    value = _scalar(name, value)
    if isinstance(value, (bool, np.bool_)):
        raise _bad(name, "expected a number, got a boolean")
    try:
        if isinstance(value, (str, bytes, np.bytes_)):
            value = _decode(name, value).strip()
        out = float(value)
    except (TypeError, ValueError):
        raise _bad(name, f"expected a number, got {value!r}") from None
    if not math.isfinite(out):
        raise _bad(name, f"must be a finite number, got {out}")
    return out


def _as_bool(name: str, value: Any) -> bool:
    value = _scalar(name, value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, (str, bytes, np.bytes_)):
        text = _decode(name, value).strip().lower()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
    raise _bad(name, f"expected true or false, got {value!r}")


def _as_str_list(name: str, value: Any) -> list[str]:
    if isinstance(value, np.ndarray):
        items = list(value.reshape(-1))
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    return [_decode(name, v) for v in items]


_CONVERT = {
    "int": _as_int,
    "float": _as_float,
    "bool": _as_bool,
    "str": lambda n, v: _decode(n, _scalar(n, v)),
    "str_list": _as_str_list,
}


def collect(inputs: Mapping[str, Any], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Merge inputs and parameters into typed values; unknown names are an error."""
    unknown_inputs = [k for k in inputs if k not in FIELDS]
    if unknown_inputs:
        raise InvalidRequest(f"unknown input(s) {sorted(unknown_inputs)}; known: {list(FIELDS)}")
    unknown = [k for k in parameters if k not in FIELDS and not k.startswith(IGNORED_PARAMETERS_PREFIX)]
    if unknown:
        raise InvalidRequest(f"unknown parameter(s) {sorted(unknown)}; known: {list(FIELDS)}")
    values: dict[str, Any] = {}
    for source in (parameters, inputs):  # inputs last: they win
        for name, raw in source.items():
            if name in FIELDS and raw is not None:
                values[name] = _CONVERT[FIELDS[name]](name, raw)
    return values


def to_generation_request(values: Mapping[str, Any], request_id: str, config: EngineConfig) -> GenerationRequest:
    """Range checks that need no tokenizer; the engine checks lengths against max_model_len."""
    prompt = values.get("text_input")
    if prompt is None:
        raise InvalidRequest("text_input: required (the prompt, a UTF-8 string)")
    if not prompt.strip():
        raise InvalidRequest("text_input: must not be empty")
    if "\x00" in prompt:
        raise InvalidRequest("text_input: must not contain NUL characters")
    max_bytes = config.max_model_len * MAX_PROMPT_BYTES_PER_TOKEN
    size = len(prompt.encode("utf-8"))
    if size > max_bytes:
        raise _bad("text_input", f"{size} bytes is too long: at most {max_bytes} bytes (max_model_len "
                                 f"{config.max_model_len} tokens x {MAX_PROMPT_BYTES_PER_TOKEN}); shorten the prompt")

    max_tokens = values.get("max_tokens", config.default_max_tokens)
    if not 1 <= max_tokens <= config.max_model_len:
        raise _bad("max_tokens", f"must be between 1 and max_model_len ({config.max_model_len}), got {max_tokens}")
    temperature = values.get("temperature", 0.0)
    if not 0.0 <= temperature <= 100.0:
        raise _bad("temperature", f"must be between 0 and 100 (0 = greedy), got {temperature}")
    top_k = values.get("top_k", 0)
    if top_k < 0:
        raise _bad("top_k", f"must be >= 0 (0 = off), got {top_k}")
    top_p = values.get("top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise _bad("top_p", f"must be in (0, 1], got {top_p}")
    seed = values.get("seed")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise _bad("seed", f"must be between 0 and {MAX_SEED}, got {seed}")
    stop = [s for s in values.get("stop", []) if s != ""]
    if len(stop) > MAX_STOP_STRINGS:
        raise _bad("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}")
    too_long = [s for s in stop if len(s) > MAX_STOP_LEN]
    if too_long:
        raise _bad("stop", f"each stop string must be at most {MAX_STOP_LEN} characters")
    min_tokens = values.get("min_tokens", 0)
    if not 0 <= min_tokens <= max_tokens:
        raise _bad("min_tokens", f"must be between 0 and max_tokens ({max_tokens}), got {min_tokens}")
    req_class = values.get("request_class", "offline").strip().lower()
    if req_class not in REQUEST_CLASSES:
        raise _bad("request_class", f"must be one of {list(REQUEST_CLASSES)}, got {values['request_class']!r}")
    priority = values.get("priority", 0)
    if not -(2**31) <= priority < 2**31:
        raise _bad("priority", f"must fit in a 32-bit integer, got {priority}")
    slo = {}
    for name in ("slo_ttft_ms", "slo_tpot_ms"):
        v = values.get(name)
        if v is not None and not 0.0 < v <= 3.6e6:
            raise _bad(name, f"must be a positive number of milliseconds (at most one hour), got {v}")
        slo[name] = v

    return GenerationRequest(
        request_id=request_id,
        prompt=prompt,
        sampling=SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
            ignore_eos=values.get("ignore_eos", False),
            min_tokens=min_tokens,
        ),
        stream=values.get("stream", False),
        req_class=req_class,
        priority=priority,
        slo_ttft_ms=slo["slo_ttft_ms"],
        slo_tpot_ms=slo["slo_tpot_ms"],
        exclude_input_in_output=values.get("exclude_input_in_output", True),
        apply_chat_template=values.get("apply_chat_template", False),
    )


def parse_request(inputs: Mapping[str, Any], parameters: Mapping[str, Any], request_id: str, config: EngineConfig) -> GenerationRequest:
    return to_generation_request(collect(inputs, parameters), request_id, config)
