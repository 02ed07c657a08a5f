"""The OpenAI-compatible API through the official `openai` SDK, against the session's real
tritonserver: chat and completions, streaming and not, errors, cancellation, 32 streams."""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.parse
import urllib.request

import openai
import pytest

from bucketserve_client import GrpcClient

from .helpers import scrape, value, wait_until

TINY = "bucketserve_tiny"
PARIS = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def sdk(server):
    return openai.OpenAI(base_url=f"{server.openai_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_and_health(server, sdk):
    assert sorted(m.id for m in sdk.models.list()) == ["bucketserve", TINY]
    with urllib.request.urlopen(f"{server.openai_url}/health", timeout=5) as r:
        assert r.status == 200


def test_chat_answers_paris_streaming_and_not(sdk):
    """The README's first example, on the default model."""
    whole = sdk.chat.completions.create(model="bucketserve", messages=PARIS, max_tokens=32)
    assert "Paris" in whole.choices[0].message.content, whole
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens > 0 and whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    stream = sdk.chat.completions.create(model="bucketserve", messages=PARIS, max_tokens=32, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # greedy: the same answer
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_completion_stream_equals_whole_and_reports_usage(sdk):
    args = dict(model=TINY, prompt="Once upon a time", max_tokens=12, extra_body={"ignore_eos": True})
    whole = sdk.completions.create(**args)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 12 and whole.usage.prompt_tokens > 0

    chunks = list(sdk.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len([t for t in texts if t]) > 1 and "".join(texts) == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_chat_template_is_the_models_own(server, sdk):
    """One user message: the same prompt (and greedy answer) as the Triton path's apply_chat_template."""
    msg = "Tell me something"
    triton = GrpcClient(server.grpc_url, TINY).generate(msg, max_tokens=8, apply_chat_template=True, ignore_eos=True)
    chat = sdk.chat.completions.create(model=TINY, messages=[{"role": "user", "content": msg}], max_completion_tokens=8,
                                       extra_body={"ignore_eos": True})
    assert triton.ok, triton.error
    assert chat.choices[0].message.content == triton.text
    assert chat.usage.prompt_tokens == triton.num_input_tokens
    # The whole conversation is rendered, not only the last message.
    longer = sdk.chat.completions.create(model=TINY, max_tokens=1, messages=[
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": msg}])
    assert longer.usage.prompt_tokens > chat.usage.prompt_tokens


def test_sampling_and_extra_fields_reach_the_model(sdk):
    base = dict(model=TINY, prompt="Hello there", max_tokens=6)
    seeded = [sdk.completions.create(**base, temperature=1.0, top_p=0.9, seed=7).choices[0].text for _ in range(2)]
    assert seeded[0] == seeded[1]  # same seed, same sample
    forced = sdk.completions.create(**base, extra_body={"min_tokens": 6, "request_class": "online", "priority": 3,
                                                        "slo_ttft_ms": 60000, "slo_tpot_ms": 60000, "ignore_eos": True})
    assert forced.usage.completion_tokens == 6
    full = sdk.completions.create(model=TINY, prompt="Hello there", max_tokens=12, extra_body={"ignore_eos": True}).choices[0].text
    cut = next(full[i:i + 2] for i in range(3, len(full) - 1) if full[i:i + 2].isascii() and full[i:i + 2].isalpha())
    stopped = sdk.completions.create(model=TINY, prompt="Hello there", max_tokens=12, stop=[cut], extra_body={"ignore_eos": True})
    assert stopped.choices[0].finish_reason == "stop" and cut not in stopped.choices[0].text
    assert full.startswith(stopped.choices[0].text) and len(stopped.choices[0].text) < len(full)


def _bad(call, **kwargs) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call(**kwargs)
    return info.value


def test_bad_input_gets_400_naming_the_field_with_the_validators_message(server, sdk):
    for field, value in [("max_tokens", 0), ("temperature", -1.0), ("top_p", 0.0), ("top_k", -1), ("min_tokens", 99)]:
        if field in ("top_k", "min_tokens"):  # BucketServe's own fields travel as extra body fields
            err = _bad(sdk.completions.create, model=TINY, prompt="hi", max_tokens=8, extra_body={field: value})
        else:
            err = _bad(sdk.completions.create, model=TINY, prompt="hi", **{"max_tokens": 8, field: value})
        assert err.status_code == 400 and err.body["param"] == field and err.body["type"] == "invalid_request_error"
        # The Triton path's validator says the same thing about the same value.
        triton = GrpcClient(server.grpc_url, TINY).generate("hi", **{"max_tokens": 8, field: value})
        assert triton.status == "error" and err.body["message"] == triton.error, (err.body, triton.error)
    seed = _bad(sdk.completions.create, model=TINY, prompt="hi", seed=-5)
    assert seed.status_code == 400 and seed.body["param"] == "seed" and "got -5" in seed.body["message"]
    chat = _bad(sdk.chat.completions.create, model=TINY, messages=PARIS, max_completion_tokens=-1)
    assert chat.status_code == 400 and chat.body["param"] == "max_completion_tokens"
    extra = _bad(sdk.completions.create, model=TINY, prompt="hi", extra_body={"request_class": "urgent"})
    assert extra.status_code == 400 and extra.body["param"] == "request_class"
    n = _bad(sdk.completions.create, model=TINY, prompt="hi", n=2)
    assert n.status_code == 400 and n.body["param"] == "n"
    empty = _bad(sdk.chat.completions.create, model=TINY, messages=[])
    assert empty.status_code == 400 and empty.body["param"] == "messages"
    unknown = _bad(sdk.chat.completions.create, model="no-such-model", messages=PARIS)
    assert isinstance(unknown, openai.NotFoundError) and unknown.body["code"] == "model_not_found"
    # The server is fine afterwards.
    assert sdk.completions.create(model=TINY, prompt="hi", max_tokens=2).usage.completion_tokens > 0


def test_oversized_body_is_refused_with_413_before_parsing(server):
    """The size in the headers is enough: the answer comes before a byte of the body is sent."""
    url = urllib.parse.urlparse(server.openai_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(4 << 20))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413
    assert json.loads(resp.read())["error"]["code"] == "request_too_large"
    conn.close()
    # A body without a length (chunked) is counted as it arrives and refused at the limit too.
    def chunks():
        for _ in range(64):
            yield b"x" * (64 << 10)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("POST", "/v1/completions", body=chunks(), encode_chunked=True, headers={"Content-Type": "application/json"})
        status = conn.getresponse().status
    except (BrokenPipeError, ConnectionResetError):  # it may hang up before the client finished sending
        status = 413
    assert status == 413
    conn.close()


def test_disconnect_mid_stream_cancels_in_the_engine(server, sdk):
    def cancelled():
        return value(scrape(server.metrics_url), "bucketserve_requests_total", model=TINY, outcome="cancelled")

    before = cancelled()
    stream = sdk.completions.create(model=TINY, prompt="Go on", max_tokens=2000, stream=True, extra_body={"ignore_eos": True})
    got = 0
    for chunk in stream:
        got += bool(chunk.choices and chunk.choices[0].text)
        if got >= 2:
            break
    stream.close()  # the HTTP connection goes; the front end cancels the gRPC stream
    assert wait_until(lambda: cancelled() == before + 1, 30), "the engine never saw the cancel"
    assert wait_until(lambda: value(scrape(server.metrics_url), "bucketserve_inflight_requests", model=TINY) == 0, 30)


def test_32_concurrent_streams(server):
    async def one(client, i):
        stream = await client.chat.completions.create(
            model=TINY, messages=[{"role": "user", "content": f"Story number {i}"}], max_tokens=16, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        texts, usage = [], None
        async for chunk in stream:
            if chunk.choices:
                texts.append(chunk.choices[0].delta.content or "")
            if chunk.usage:
                usage = chunk.usage
        return "".join(texts), usage

    async def run():
        async with openai.AsyncOpenAI(base_url=f"{server.openai_url}/v1", api_key="unused", max_retries=0, timeout=300) as client:
            return await asyncio.gather(*(one(client, i) for i in range(32)))

    results = asyncio.run(run())
    assert len(results) == 32
    assert all(usage is not None and usage.completion_tokens == 16 and text for text, usage in results)
