"""Malformed requests for the validation tests: hypothesis strategies that build a request with
at least one defect, plus the word its error message must contain (the field to fix).

gRPC requests are lists of (input name, values, Triton dtype); HTTP requests are generate JSON
bodies (or raw bytes). Every request here is invalid by construction."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import strategies as st

MAX_MODEL_LEN = 2048  # the hardening server's setting
MAX_PROMPT_BYTES = MAX_MODEL_LEN * 128

words = st.sampled_from(["bucket", "batch", "token", "queue", "memory", "hello", "world", "é", "日本", "🙂"])
good_prompt = st.lists(words, min_size=1, max_size=12).map(" ".join)


def _text(s: str | bytes) -> np.ndarray:
    return np.array([s.encode("utf-8") if isinstance(s, str) else s], dtype=np.object_)


def _bytes_list(items) -> np.ndarray:
    return np.array([s.encode("utf-8") for s in items], dtype=np.object_)


def invalid_utf8():
    return st.binary(min_size=1, max_size=40).filter(lambda b: not _is_utf8(b))


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


bad_temperature = st.one_of(st.just(math.nan), st.just(math.inf), st.just(-math.inf),
                            st.floats(max_value=-0.5, allow_nan=False, allow_infinity=False, width=32),
                            st.floats(min_value=128.0, max_value=2.0**100, allow_nan=False, width=32))
bad_top_p = st.one_of(st.just(math.nan), st.floats(max_value=0.0, allow_nan=False, allow_infinity=True, width=32),
                      st.floats(min_value=1.5, allow_nan=False, allow_infinity=True, width=32))
bad_max_tokens = st.one_of(st.integers(-(2**31), 0), st.integers(MAX_MODEL_LEN + 1, 2**31 - 1))
bad_class = st.text(min_size=0, max_size=20).filter(lambda s: s.strip().lower() not in ("online", "offline") and "\x00" not in s)
too_many_stops = st.lists(st.text(alphabet="abcxyz", min_size=1, max_size=5), min_size=17, max_size=40)
too_long_stop = st.integers(257, 3000).map(lambda n: ["s" * n])


@st.composite
def grpc_request(draw):
    """(tensors, expected word in the error message)."""
    prompt = draw(good_prompt)
    base = [("text_input", _text(prompt), "BYTES"), ("max_tokens", [4], "INT32")]
    kind = draw(st.sampled_from([
        "missing_text", "empty_text", "non_utf8", "nul", "text_shape", "text_dtype", "max_tokens_dtype",
        "temperature_dtype", "max_tokens", "over_max_model_len", "oversize", "temperature", "top_p", "top_k",
        "request_class", "stops_many", "stop_long", "min_tokens", "slo", "unknown_input", "stop_non_utf8",
    ]))
    extra = []
    if kind not in ("request_class",) and draw(st.booleans()):
        extra.append(("request_class", _text(draw(st.sampled_from(["online", "offline"]))), "BYTES"))
    if draw(st.booleans()):
        extra.append(("stream", [draw(st.booleans())], "BOOL"))

    if kind == "missing_text":
        return [t for t in base if t[0] != "text_input"] + extra, "text_input"
    if kind == "empty_text":
        return [("text_input", _text(draw(st.sampled_from(["", " ", "\n\t ", "   "]))), "BYTES")] + base[1:] + extra, "text_input"
    if kind == "non_utf8":
        return [("text_input", _text(draw(invalid_utf8())), "BYTES")] + base[1:] + extra, "text_input"
    if kind == "nul":
        return [("text_input", _text(prompt + "\x00" + prompt), "BYTES")] + base[1:] + extra, "text_input"
    if kind == "text_shape":
        n = draw(st.sampled_from([(2,), (1, 1), (3, 2), (0,)]))
        arr = np.array([prompt.encode()] * int(np.prod(n)), dtype=np.object_).reshape(n)
        return [("text_input", arr, "BYTES")] + base[1:] + extra, "text_input"
    if kind == "text_dtype":
        return [("text_input", [7], "INT32")] + base[1:] + extra, "text_input"
    if kind == "max_tokens_dtype":
        dtype = draw(st.sampled_from(["FP32", "INT64", "BYTES"]))
        vals = _text("4") if dtype == "BYTES" else [4]
        return base[:1] + [("max_tokens", vals, dtype)] + extra, "max_tokens"
    if kind == "temperature_dtype":
        return base + [("temperature", [1], "INT32")] + extra, "temperature"
    if kind == "max_tokens":
        return base[:1] + [("max_tokens", [draw(bad_max_tokens)], "INT32")] + extra, "max_tokens"
    if kind == "over_max_model_len":
        n = draw(st.integers(60, 200))  # ~n+1 prompt tokens with the tiny tokenizer
        return [("text_input", _text(" ".join(["bucket"] * n)), "BYTES"), ("max_tokens", [MAX_MODEL_LEN - 2], "INT32")] + extra, "max_model_len"
    if kind == "oversize":
        size = draw(st.integers(MAX_PROMPT_BYTES + 1, MAX_PROMPT_BYTES * 2))
        return [("text_input", _text("a" * size), "BYTES")] + base[1:] + extra, "text_input"
    if kind == "temperature":
        return base + [("temperature", [draw(bad_temperature)], "FP32")] + extra, "temperature"
    if kind == "top_p":
        return base + [("top_p", [draw(bad_top_p)], "FP32"), ("temperature", [0.7], "FP32")] + extra, "top_p"
    if kind == "top_k":
        return base + [("top_k", [draw(st.integers(-(2**31), -1))], "INT32")] + extra, "top_k"
    if kind == "request_class":
        return base + [("request_class", _text(draw(bad_class)), "BYTES")] + extra, "request_class"
    if kind == "stops_many":
        stops = draw(too_many_stops)
        return base + [("stop", _bytes_list(stops), "BYTES")] + extra, "stop"
    if kind == "stop_long":
        return base + [("stop", _bytes_list(draw(too_long_stop)), "BYTES")] + extra, "stop"
    if kind == "stop_non_utf8":
        return base + [("stop", np.array([draw(invalid_utf8())], dtype=np.object_), "BYTES")] + extra, "stop"
    if kind == "min_tokens":
        return base + [("min_tokens", [draw(st.one_of(st.integers(5, 2**31 - 1), st.integers(-(2**31), -1)))], "INT32")] + extra, "min_tokens"
    if kind == "slo":
        v = draw(st.one_of(st.just(math.nan), st.floats(max_value=0.0, allow_nan=False, width=32), st.just(math.inf)))
        return base + [("slo_ttft_ms", [v], "FP32")] + extra, "slo_ttft_ms"
    if kind == "unknown_input":
        name = draw(st.sampled_from(["prompt", "max_new_tokens", "input_ids", "foo"]))
        return base + [(name, [1], "INT32")] + extra, name
    raise AssertionError(kind)


@st.composite
def http_request(draw):
    """(body dict or raw bytes, expected word in the message or None when Triton's JSON parser answers)."""
    prompt = draw(good_prompt)
    body = {"text_input": prompt, "max_tokens": 4}
    if draw(st.booleans()):
        body["request_class"] = draw(st.sampled_from(["online", "offline"]))
    kind = draw(st.sampled_from([
        "missing_text", "empty_text", "text_type", "max_tokens", "max_tokens_type", "over_max_model_len",
        "oversize", "temperature", "top_p", "top_k", "request_class", "stops_many", "stop_long", "min_tokens",
        "seed", "priority", "unknown_key", "slo", "not_json", "non_utf8_body", "nul",
    ]))
    if kind == "missing_text":
        del body["text_input"]
        return body, "text_input"
    if kind == "empty_text":
        body["text_input"] = draw(st.sampled_from(["", " ", "\n"]))
        return body, "text_input"
    if kind == "text_type":
        body["text_input"] = draw(st.sampled_from([7, 1.5, True, ["a", "b"], {"a": 1}, None]))
        return body, None
    if kind == "nul":
        body["text_input"] = prompt + "\x00"
        return body, "text_input"
    if kind == "max_tokens":
        body["max_tokens"] = draw(bad_max_tokens)
        return body, "max_tokens"
    if kind == "max_tokens_type":
        body["max_tokens"] = draw(st.sampled_from(["many", 2.5, [1, 2], {"n": 1}, 2**40, -(2**40)]))
        return body, None
    if kind == "over_max_model_len":
        body["text_input"] = " ".join(["bucket"] * draw(st.integers(60, 200)))
        body["max_tokens"] = MAX_MODEL_LEN - 2
        return body, "max_model_len"
    if kind == "oversize":
        body["text_input"] = "a" * draw(st.integers(MAX_PROMPT_BYTES + 1, MAX_PROMPT_BYTES * 2))
        return body, "text_input"
    if kind == "temperature":
        body["temperature"] = draw(st.one_of(st.floats(max_value=-1e-3, allow_nan=False, allow_infinity=False),
                                             st.floats(min_value=101.0, max_value=1e30)))
        return body, "temperature"
    if kind == "top_p":
        body["top_p"] = draw(st.one_of(st.floats(max_value=0.0, allow_nan=False, allow_infinity=False),
                                       st.floats(min_value=1.01, max_value=1e30)))
        return body, "top_p"
    if kind == "top_k":
        body["top_k"] = draw(st.integers(-(2**31), -1))
        return body, "top_k"
    if kind == "request_class":
        body["request_class"] = draw(bad_class)
        return body, "request_class"
    if kind == "stops_many":
        body["stop"] = draw(too_many_stops)
        return body, "stop"
    if kind == "stop_long":
        body["stop"] = draw(too_long_stop)
        return body, "stop"
    if kind == "min_tokens":
        body["min_tokens"] = draw(st.integers(5, 2**31 - 1))
        return body, "min_tokens"
    if kind == "seed":
        body["seed"] = draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63)))
        return body, None
    if kind == "priority":
        # Not out-of-range integers: Triton 2.51's JSON -> INT32 conversion wraps them silently
        # (documented in docs/reliability.md); the model only ever sees a valid int32.
        body["priority"] = draw(st.sampled_from(["high", 1.5, [1, 2], {"p": 1}, True]))
        return body, None
    if kind == "unknown_key":
        key = draw(st.sampled_from(["prompt", "max_new_tokens", "temperatur", "n", "best_of"]))
        body[key] = 1
        return body, key
    if kind == "slo":
        body["slo_tpot_ms"] = draw(st.floats(max_value=0.0, allow_nan=False, allow_infinity=False))
        return body, "slo_tpot_ms"
    if kind == "not_json":
        return draw(st.sampled_from([b"", b"{", b"not json", b"[1,2,3]", b'{"text_input": }', b"null"])), None
    if kind == "non_utf8_body":
        return b'{"text_input": "' + draw(invalid_utf8()) + b'", "max_tokens": 4}', None
    raise AssertionError(kind)


def describe(req) -> str:
    body = req if isinstance(req, (bytes, dict)) else [(n, getattr(v, "shape", None), d) for n, v, d in req]
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else json.dumps(body, default=str) if isinstance(body, dict) else str(body)
    return text[:300]
