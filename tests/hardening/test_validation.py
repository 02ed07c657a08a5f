"""Hostile input through a real tritonserver: every malformed request gets exactly one final
error whose message names what to fix, nothing crashes, and valid requests keep working.

CI runs 400 gRPC + 150 HTTP fuzzed requests; the slow long form sends several thousand."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from bucketserve_client import GrpcClient, HttpClient

from .helpers import GrpcStream, http_post
from .malformed import MAX_PROMPT_BYTES, describe, grpc_request, http_request

FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=True)


def check_grpc(stream: GrpcStream, req, word: str) -> None:
    tensors = req
    ans = stream.send(tensors, timeout_s=60)
    assert ans.error, f"no error for {describe(req)}: {ans}"
    assert ans.responses == 1 and not ans.texts, f"more than one response for {describe(req)}"
    assert word in ans.error, f"message {ans.error!r} does not name {word!r} ({describe(req)})"


def check_http(server, body, word: str | None, endpoint: str) -> None:
    ans = http_post(server, body, endpoint)
    assert ans.status is not None, f"{ans.error} for {describe(body)}"
    assert ans.status >= 400 or ans.error, f"accepted: {describe(body)} -> {ans.status} {ans.raw[:200]!r}"
    assert ans.error, f"no error message for {describe(body)} ({ans.status})"
    if word is not None:
        assert ans.status == 400, f"{ans.status} {ans.error}"  # INVALID_ARG
        assert word in ans.error, f"message {ans.error!r} does not name {word!r} ({describe(body)})"


def valid_request_works(server):
    r = GrpcClient(server.grpc_url(), server.model).generate("after the storm", max_tokens=5, ignore_eos=True)
    assert r.ok and r.num_output_tokens == 5, r.error
    h = HttpClient(server.handle.http_url, server.model).generate("after the storm", max_tokens=5, ignore_eos=True)
    assert h.ok and h.num_output_tokens == 5, h.error


@pytest.mark.parametrize("body, word", [
    ({"max_tokens": 4}, "text_input"),
    ({"text_input": "  ", "max_tokens": 4}, "text_input"),
    ({"text_input": "hi", "max_tokens": 0}, "max_tokens"),
    ({"text_input": "hi", "max_tokens": -3}, "max_tokens"),
    ({"text_input": "hi", "max_tokens": 2**31 - 1}, "max_tokens"),
    ({"text_input": " ".join(["bucket"] * 100), "max_tokens": 2000}, "max_model_len"),
    ({"text_input": "a" * (MAX_PROMPT_BYTES + 1)}, "text_input"),
    ({"text_input": "hi", "temperature": -1.0}, "temperature"),
    ({"text_input": "hi", "temperature": 1e9}, "temperature"),
    ({"text_input": "hi", "top_p": 0.0}, "top_p"),
    ({"text_input": "hi", "top_p": 1.5}, "top_p"),
    ({"text_input": "hi", "top_k": -1}, "top_k"),
    ({"text_input": "hi", "request_class": "batch"}, "request_class"),
    ({"text_input": "hi", "stop": ["x"] * 17}, "stop"),
    ({"text_input": "hi", "stop": ["y" * 300]}, "stop"),
    ({"text_input": "hi", "min_tokens": 9, "max_tokens": 4}, "min_tokens"),
    ({"text_input": "hi", "slo_ttft_ms": 0}, "slo_ttft_ms"),
    ({"text_input": "hi", "max_new_tokens": 3}, "max_new_tokens"),
])
@pytest.mark.parametrize("endpoint", ["generate", "generate_stream"])
def test_http_invalid_arg_names_the_field(server, body, word, endpoint):
    check_http(server, body, word, endpoint)


def test_grpc_non_utf8_nan_and_wrong_dtype_are_refused(server):
    import math

    stream = GrpcStream(server.grpc_url(), server.model)
    try:
        check_grpc(stream, [("text_input", [b"\xff\xfe bad"], "BYTES")], "text_input")
        check_grpc(stream, [("text_input", [b"hi"], "BYTES"), ("temperature", [math.nan], "FP32")], "temperature")
        check_grpc(stream, [("text_input", [b"hi"], "BYTES"), ("top_p", [math.nan], "FP32")], "top_p")
        check_grpc(stream, [("text_input", [b"hi"], "BYTES"), ("max_tokens", [4.0], "FP32")], "max_tokens")
        check_grpc(stream, [("text_input", [b"hi", b"there"], "BYTES")], "text_input")
        check_grpc(stream, [("text_input", [b"hi"], "BYTES"), ("stop", [b"ok", b"\xc3("], "BYTES")], "stop")
        assert stream.extra_responses(0.5) == 0
    finally:
        stream.close()
    valid_request_works(server)


def fuzz(server, grpc_examples: int, http_examples: int) -> dict:
    before = server.settled_outcomes()
    stream = GrpcStream(server.grpc_url(), server.model)
    sent = {"grpc": 0, "http": 0}

    @settings(FUZZ, max_examples=grpc_examples)
    @given(case=grpc_request())
    def grpc_case(case):
        req, word = case
        sent["grpc"] += 1
        check_grpc(stream, req, word)

    @settings(FUZZ, max_examples=http_examples)
    @given(case=http_request())
    def http_case(case):
        body, word = case
        sent["http"] += 1
        check_http(server, body, word, "generate_stream" if sent["http"] % 3 == 0 else "generate")

    try:
        grpc_case()
        assert stream.extra_responses(1.0) == 0  # no request got a second final
        assert stream.responses == sent["grpc"]
    finally:
        stream.close()
    http_case()
    assert server.handle.alive() and server.handle.ready()
    valid_request_works(server)
    after = server.settled_outcomes()
    # Nothing malformed was run: no success (beyond the two valid checks) and no engine error.
    assert after["success"] - before["success"] == 2
    assert after["error"] == before["error"]
    return sent


def test_fuzz_malformed_requests(server):
    sent = fuzz(server, grpc_examples=400, http_examples=150)
    print(f"\nfuzz: {sent['grpc']} gRPC + {sent['http']} HTTP malformed requests, each one error final")
    assert sent["grpc"] + sent["http"] >= 500


@pytest.mark.slow
def test_fuzz_malformed_requests_long(server):
    sent = fuzz(server, grpc_examples=4000, http_examples=2000)
    print(f"\nfuzz long form: {sent['grpc']} gRPC + {sent['http']} HTTP malformed requests, each one error final")
