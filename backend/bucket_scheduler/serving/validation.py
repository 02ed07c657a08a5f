"""Turn one Triton request's inputs and parameters into a GenerationRequest, or say what to fix.

Triton checks declared dtypes, but not a python model's required inputs, nor values. Here:
decoding (tensors and parameters to typed values); the ranges are checked by the one validator
every entry point shares (runtime/validation.py). Every field may come as an input tensor
(Triton LLM names) or as a request parameter (the generate endpoint puts JSON keys that are
not inputs there; gRPC clients can set them too). An input wins over a parameter of the same name.

Pure: numpy in, dataclasses out, no Triton import, so it is unit-tested directly.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from bucket_scheduler.runtime.api import EngineConfig, GenerationRequest, InvalidRequest, SamplingParams
from bucket_scheduler.runtime.validation import MAX_STOP_STRINGS, validate_request  # noqa: F401 (tests)

# Our API's field names as this endpoint spells them (for the validator's messages).
TRITON_NAMES = {"prompt": "text_input", "req_class": "request_class"}

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
    """Typed values -> a validated GenerationRequest (the engine checks tokens against max_model_len)."""
    prompt = values.get("text_input")
    if prompt is None:
        raise InvalidRequest("text_input: required (the prompt, a UTF-8 string)")
    # Only what the request gave: every default lives in the api.py dataclasses (max_tokens:
    # the engine's default_max_tokens, filled in by the validator).
    sampling = {k: v for k, v in values.items() if k in SamplingParams.__dataclass_fields__}
    if "stop" in sampling:  # an empty tensor entry means no stop string
        sampling["stop"] = [s for s in sampling["stop"] if s != ""]
    given = {k: v for k, v in values.items() if k in GenerationRequest.__dataclass_fields__}
    if "request_class" in values:
        given["req_class"] = values["request_class"].strip().lower()
    req = GenerationRequest(request_id=request_id, prompt=prompt, sampling=SamplingParams(**sampling), **given)
    return validate_request(req, config, TRITON_NAMES)


def parse_request(inputs: Mapping[str, Any], parameters: Mapping[str, Any], request_id: str, config: EngineConfig) -> GenerationRequest:
    return to_generation_request(collect(inputs, parameters), request_id, config)
