"""The one request validator (runtime/validation.py): every entry point gets the same ranges
and messages that name the field first."""

import numpy as np
import pytest

from bucket_scheduler.runtime.api import EngineConfig, GenerationRequest, InvalidRequest, SamplingParams
from bucket_scheduler.runtime.validation import (MAX_STOP_STRINGS, MAX_TEMPERATURE, check_length, validate_config,
                                                 validate_request)
from bucket_scheduler.serving.validation import parse_request

CFG = EngineConfig(max_model_len=512, default_max_tokens=17)


def gen(prompt="hello", **kw):
    sampling = {k: kw.pop(k) for k in list(kw) if k in SamplingParams.__dataclass_fields__}
    return GenerationRequest("r1", prompt, SamplingParams(**sampling), **kw)


BAD = [
    (dict(prompt=""), "prompt"),
    (dict(prompt="  \n"), "prompt"),
    (dict(prompt="a\x00b"), "prompt"),
    (dict(prompt="a" * (512 * 128 + 1)), "prompt"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=513), "max_tokens"),
    (dict(max_tokens=2.5), "max_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=MAX_TEMPERATURE * 10), "temperature"),  # once only the Triton path refused it
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(seed=-1), "seed"),
    (dict(seed=2**63), "seed"),
    (dict(stop=["x"] * (MAX_STOP_STRINGS + 1)), "stop"),
    (dict(stop=["y" * 300]), "stop"),  # once only the Triton path refused it
    (dict(stop=[""]), "stop"),
    (dict(min_tokens=18), "min_tokens"),  # above the default max_tokens (17)
    (dict(req_class="batch"), "req_class"),
    (dict(priority=2**31), "priority"),
    (dict(slo_ttft_ms=0.0), "slo_ttft_ms"),
    (dict(slo_tpot_ms=3.6e6 + 1), "slo_tpot_ms"),
]


@pytest.mark.parametrize("kw, field", BAD)
def test_bad_values_name_the_field_first(kw, field):
    with pytest.raises(InvalidRequest) as err:
        validate_request(gen(**kw), CFG)
    assert str(err.value).startswith(f"{field}: "), str(err.value)


def test_defaults_are_filled_in_and_good_values_pass():
    out = validate_request(gen(temperature=MAX_TEMPERATURE, top_k=2**31 - 1, seed=2**63 - 1, stop=["\n"]), CFG)
    assert out.sampling.max_tokens == 17 and out.sampling.stop == ["\n"]
    same = gen(max_tokens=5)
    assert validate_request(same, CFG) is same  # nothing to fill: the request itself


def triton_tensor(value):
    if isinstance(value, str):
        return np.array([value.encode()], dtype=np.object_)
    if isinstance(value, list):
        return np.array([v.encode() for v in value], dtype=np.object_)
    return np.array([value])


TRITON_NAME = {"prompt": "text_input", "req_class": "request_class"}


# Where Triton's decoding answers first: a non-integer, a NaN, an empty stop entry (= no stop).
DECODED_FIRST = [dict(max_tokens=2.5), dict(temperature=float("nan")), dict(stop=[""])]


@pytest.mark.parametrize("kw, field", [b for b in BAD if repr(b[0]) not in map(repr, DECODED_FIRST)])
def test_triton_path_gives_the_same_message(kw, field):
    """Serving only decodes; the ranges and the words are the shared validator's."""
    with pytest.raises(InvalidRequest) as direct:
        validate_request(gen(**kw), CFG)
    inputs = {"text_input": triton_tensor(kw.pop("prompt", "hello"))}
    names = {"req_class": "request_class"}
    inputs.update({names.get(k, k): triton_tensor(v) for k, v in kw.items()})
    with pytest.raises(InvalidRequest) as triton:
        parse_request(inputs, {}, "r1", CFG)
    name = TRITON_NAME.get(field, field)
    assert str(triton.value) == f"{name}: " + str(direct.value).split(": ", 1)[1]


def test_length_check_names_the_field_to_change():
    check_length(500, 12, CFG)
    with pytest.raises(InvalidRequest, match=r"^max_tokens: .*max_model_len 512; lower max_tokens to at most 12"):
        check_length(500, 13, CFG)
    with pytest.raises(InvalidRequest, match=r"^prompt: .*shorten the prompt"):
        check_length(600, 1, CFG)
    with pytest.raises(InvalidRequest, match=r"^prompt: encodes to zero tokens"):
        check_length(0, 1, CFG)


def test_config_checks():
    validate_config(CFG)
    for bad in (EngineConfig(offline_queue_fraction=0.0), EngineConfig(max_model_len=1), EngineConfig(default_max_tokens=0)):
        with pytest.raises(ValueError):
            validate_config(bad)
