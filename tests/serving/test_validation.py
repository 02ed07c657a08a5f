import math

import numpy as np
import pytest

from bucket_scheduler.runtime.api import EngineConfig, InvalidRequest
from bucket_scheduler.serving.validation import FIELDS, MAX_STOP_STRINGS, parse_request

CFG = EngineConfig(max_model_len=512, default_max_tokens=17)


def t(value, dtype=None):
    """A tensor as Triton's python backend hands it over (shape [1] unless given a list)."""
    if isinstance(value, str):
        return np.array([value.encode()], dtype=np.object_)
    if isinstance(value, list):
        return np.array([v.encode() if isinstance(v, str) else v for v in value], dtype=dtype or np.object_)
    return np.array([value], dtype=dtype)


def parse(inputs=None, params=None):
    return parse_request(inputs or {}, params or {}, "rid-1", CFG)


def test_minimal_request_takes_engine_defaults():
    req = parse({"text_input": t("Hello")})
    assert req.request_id == "rid-1" and req.prompt == "Hello"
    assert req.sampling.max_tokens == 17
    assert req.stream is False and req.req_class == "offline" and req.exclude_input_in_output is True
    assert req.sampling.temperature == 0.0 and req.sampling.stop == []


def test_every_input_is_carried_over():
    req = parse({
        "text_input": t("Hi there"), "max_tokens": t(9, np.int32), "stream": t(True, np.bool_),
        "temperature": t(0.7, np.float32), "top_k": t(5, np.int32), "top_p": t(0.9, np.float32),
        "seed": t(123, np.uint64), "stop": t(["\n", "END"]), "ignore_eos": t(True, np.bool_),
        "min_tokens": t(3, np.int32), "exclude_input_in_output": t(False, np.bool_),
        "request_class": t("online"), "priority": t(2, np.int32), "slo_ttft_ms": t(250.0, np.float32),
        "slo_tpot_ms": t(40.0, np.float32),
    })
    s = req.sampling
    assert (s.max_tokens, s.top_k, s.seed, s.min_tokens, s.ignore_eos) == (9, 5, 123, 3, True)
    assert math.isclose(s.temperature, 0.7, rel_tol=1e-6) and math.isclose(s.top_p, 0.9, rel_tol=1e-6)
    assert s.stop == ["\n", "END"]
    assert req.stream and req.req_class == "online" and req.priority == 2 and not req.exclude_input_in_output
    assert (req.slo_ttft_ms, req.slo_tpot_ms) == (250.0, 40.0)


def test_parameters_work_like_inputs_and_inputs_win():
    # The generate endpoint turns JSON keys that are not inputs into parameters.
    req = parse({"text_input": t("x"), "max_tokens": t(4, np.int32)},
                {"max_tokens": 99, "request_class": "online", "stop": "###", "stream": True, "seed": 7})
    assert req.sampling.max_tokens == 4
    assert req.req_class == "online" and req.sampling.stop == ["###"] and req.stream and req.sampling.seed == 7


def test_triton_parameters_are_ignored():
    assert parse({"text_input": t("x")}, {"triton_enable_empty_final_response": True}).prompt == "x"


@pytest.mark.parametrize(
    "inputs, params, fragment",
    [
        ({}, {}, "text_input: required"),
        ({"text_input": t("   ")}, {}, "must not be empty"),
        ({"text_input": np.array([b"\xff\xfe"], dtype=np.object_)}, {}, "not valid UTF-8"),
        ({"text_input": np.array([b"a", b"b"], dtype=np.object_)}, {}, "expected one value"),
        ({"text_input": t("x"), "max_tokens": t(0, np.int32)}, {}, "max_tokens: must be between 1 and max_model_len (512)"),
        ({"text_input": t("x"), "max_tokens": t(-3, np.int32)}, {}, "max_tokens"),
        ({"text_input": t("x"), "max_tokens": t(10**6, np.int32)}, {}, "max_tokens"),
        ({"text_input": t("x"), "temperature": t(np.nan, np.float32)}, {}, "temperature: must be a finite number"),
        ({"text_input": t("x"), "temperature": t(-1.0, np.float32)}, {}, "temperature"),
        ({"text_input": t("x"), "top_p": t(0.0, np.float32)}, {}, "top_p: must be in (0, 1]"),
        ({"text_input": t("x"), "top_p": t(1.5, np.float32)}, {}, "top_p"),
        ({"text_input": t("x"), "top_k": t(-1, np.int32)}, {}, "top_k"),
        ({"text_input": t("x"), "min_tokens": t(50, np.int32), "max_tokens": t(5, np.int32)}, {}, "min_tokens"),
        ({"text_input": t("x"), "request_class": t("urgent")}, {}, "request_class: must be one of"),
        ({"text_input": t("x"), "stop": t(["s"] * (MAX_STOP_STRINGS + 1))}, {}, "at most"),
        ({"text_input": t("x"), "stop": t(["y" * 1000])}, {}, "stop"),
        ({"text_input": t("x"), "slo_ttft_ms": t(-5.0, np.float32)}, {}, "slo_ttft_ms"),
        ({"text_input": t("x")}, {"max_tokens": "many"}, "max_tokens: expected an integer"),
        ({"text_input": t("x")}, {"max_tokens": True}, "boolean"),
        ({"text_input": t("x")}, {"stream": "maybe"}, "stream: expected true or false"),
        ({"text_input": t("x")}, {"max_token": 5}, "unknown parameter(s) ['max_token']"),
        ({"text_input": t("x"), "bogus": t(1, np.int32)}, {}, "unknown input(s)"),
    ],
)
def test_bad_requests_say_what_to_fix(inputs, params, fragment):
    with pytest.raises(InvalidRequest) as info:
        parse(inputs, params)
    assert fragment in str(info.value)


def test_the_field_table_matches_the_model_config():
    import re
    from pathlib import Path

    config = (Path(__file__).resolve().parents[2] / "model_repository" / "bucketserve" / "config.pbtxt").read_text()
    inputs = re.findall(r'\{\s*name:\s*"(\w+)"\s*data_type', config.split("output [")[0])
    assert inputs == list(FIELDS)
