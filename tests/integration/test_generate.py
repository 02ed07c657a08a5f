"""Generation through a real tritonserver: gRPC streaming, HTTP generate / generate_stream,
both hosted models, bad input."""

import json
import urllib.error
import urllib.request

from bucketserve_client import GrpcClient, HttpClient

PROMPT = "The capital of France is"
GREEDY = dict(max_tokens=16, temperature=0.0, ignore_eos=True)


def test_stream_deltas_concatenate_to_the_non_streaming_text(server):
    grpc = GrpcClient(server.grpc_url, "bucketserve")
    http = HttpClient(server.http_url, "bucketserve")
    deltas = []
    streamed = grpc.generate(PROMPT, stream=True, on_delta=deltas.append, **GREEDY)
    whole = grpc.generate(PROMPT, stream=False, **GREEDY)
    assert streamed.ok and whole.ok, (streamed.error, whole.error)
    assert len(deltas) > 1 and whole.chunks == 1
    assert "".join(deltas) == streamed.text == whole.text
    assert whole.text.strip() and whole.finish_reason == "length" and whole.num_output_tokens == 16
    assert whole.num_input_tokens == streamed.num_input_tokens > 0

    # HTTP: /generate answers in one JSON body, /generate_stream in server-sent events.
    http_whole = http.generate(PROMPT, stream=False, **GREEDY)
    http_stream = http.generate(PROMPT, stream=True, **GREEDY)
    assert http_whole.ok and http_stream.ok, (http_whole.error, http_stream.error)
    assert http_whole.text == http_stream.text == whole.text
    assert http_stream.chunks > 1 and http_stream.finish_reason == "length" and http_stream.num_output_tokens == 16


def test_curl_style_generate_body(server):
    """The README's curl example: plain JSON keys; non-input keys arrive as parameters."""
    body = json.dumps({"text_input": PROMPT, "max_tokens": 4, "request_class": "online", "slo_ttft_ms": 60000}).encode()
    req = urllib.request.Request(f"{server.http_url}/v2/models/bucketserve/generate", data=body,
                                 headers={"Content-Type": "application/json"})
    answer = json.loads(urllib.request.urlopen(req, timeout=120).read())
    assert answer["model_name"] == "bucketserve"
    assert isinstance(answer["text_output"], str) and answer["num_output_tokens"] <= 4
    assert answer["finish_reason"] in ("length", "stop")


def test_exclude_input_in_output_false_returns_the_prompt_first(server):
    r = GrpcClient(server.grpc_url, "bucketserve").generate(PROMPT, exclude_input_in_output=False, **GREEDY)
    assert r.ok and r.text.startswith(PROMPT) and len(r.text) > len(PROMPT)


def test_both_models_answer_in_the_same_server(server):
    big = GrpcClient(server.grpc_url, "bucketserve").generate("Hello", stream=True, max_tokens=4, ignore_eos=True)
    tiny = GrpcClient(server.grpc_url, "bucketserve_tiny").generate("Hello", stream=True, max_tokens=4, ignore_eos=True)
    assert big.ok and tiny.ok, (big.error, tiny.error)
    assert big.num_output_tokens == tiny.num_output_tokens == 4
    # Different models (SmolLM2 vs a random tiny Llama) tokenize differently.
    assert big.text != tiny.text
    index = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{server.http_url}/v2/repository/index", data=b"{}", method="POST"), timeout=10).read())
    assert {(m["name"], m.get("state")) for m in index} == {("bucketserve", "READY"), ("bucketserve_tiny", "READY")}


def _http_error(server, model, body):
    req = urllib.request.Request(f"{server.http_url}/v2/models/{model}/generate", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]
    raise AssertionError("expected an error")


def test_bad_request_gets_invalid_arg_and_the_next_one_succeeds(server):
    for body, fragment in [
        ({"max_tokens": 4}, "text_input: required"),
        ({"text_input": "hi", "max_tokens": 0}, "max_tokens: must be between 1"),
        ({"text_input": "hi", "temperature": -1}, "temperature"),
        ({"text_input": "hi", "request_class": "urgent"}, "request_class: must be one of"),
        ({"text_input": "hi", "max_token": 3}, "unknown parameter(s) ['max_token']"),
        ({"text_input": "word " * 3000, "max_tokens": 8}, "max_model_len"),
    ]:
        code, message = _http_error(server, "bucketserve_tiny", body)
        assert code == 400 and fragment in message, (body, code, message)  # 400 = INVALID_ARG

    bad = GrpcClient(server.grpc_url, "bucketserve_tiny").generate("hi", stream=True, max_tokens=-5)
    assert bad.status == "error" and "max_tokens" in bad.error
    good = GrpcClient(server.grpc_url, "bucketserve_tiny").generate("hi", stream=True, max_tokens=5, ignore_eos=True)
    assert good.ok and good.num_output_tokens == 5
