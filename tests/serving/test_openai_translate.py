"""The OpenAI front end's pure parts: request translation (shape checks only; values pass to
the model's validator untouched) and the mapping of the model's error messages."""

from __future__ import annotations

import json

import pytest

from bucket_scheduler.serving.openai.errors import OpenAIError, from_model_error
from bucket_scheduler.serving.openai.responses import Answer
from bucket_scheduler.serving.openai.translate import chat_call, completion_call


def _render(model, messages):
    return "|".join(f"{m['role']}:{m['content']}" for m in messages)


def test_completion_fields_become_parameters_and_inputs():
    call = completion_call({"model": "m", "prompt": ["hi"], "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "seed": 3,
                            "stop": "\n", "stream": True, "stream_options": {"include_usage": True}, "echo": True,
                            "request_class": "online", "priority": 2, "slo_ttft_ms": 100, "ignore_eos": True,
                            "min_tokens": 1, "user": "someone"})
    assert call.prompt == "hi" and call.stream and call.include_usage
    assert call.parameters == {"max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "seed": 3, "request_class": "online",
                               "slo_ttft_ms": 100, "ignore_eos": True, "min_tokens": 1}
    assert call.options == {"stop": ["\n"], "priority": 2, "exclude_input_in_output": False}


def test_values_are_not_judged_here():
    """Out-of-range values pass on: the model's validator names them (and its message is the 400)."""
    call = completion_call({"model": "m", "prompt": "hi", "max_tokens": -3, "temperature": "hot", "seed": 2**70})
    assert call.parameters == {"max_tokens": -3, "temperature": "hot", "seed": str(2**70)}


def test_chat_prefers_max_completion_tokens_and_renders_all_messages():
    call = chat_call({"model": "m", "max_tokens": 9, "max_completion_tokens": 4, "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
        _render)
    assert call.prompt == "system:be brief|user:ab"
    assert call.parameters["max_tokens"] == 4 and call.param_names["max_tokens"] == "max_completion_tokens"
    assert call.param_names["text_input"] == "messages"


@pytest.mark.parametrize("body, param", [
    ({"prompt": "hi"}, "model"),
    ({"model": "m", "prompt": "hi", "n": 2}, "n"),
    ({"model": "m", "prompt": ["a", "b"]}, "prompt"),
    ({"model": "m", "prompt": [1, 2, 3]}, "prompt"),
    ({"model": "m", "prompt": "hi", "stop": [1]}, "stop"),
    ({"model": "m", "prompt": "hi", "priority": 2**40}, "priority"),
    ({"model": "m", "prompt": "hi", "max_tokens": [1]}, "max_tokens"),
    ({"model": "m", "prompt": "hi", "logprobs": 2}, "logprobs"),
    ({"model": "m", "prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "m", "prompt": "hi", "presence_penalty": 0.5}, "presence_penalty"),
])
def test_shape_errors_name_the_field(body, param):
    with pytest.raises(OpenAIError) as info:
        completion_call(body)
    assert info.value.status == 400 and info.value.param == param


@pytest.mark.parametrize("body", [{"model": "m"}, {"model": "m", "messages": []}, {"model": "m", "messages": [{"content": "x"}]},
                                  {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
                                  {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}])
def test_chat_shape_errors(body):
    with pytest.raises(OpenAIError) as info:
        chat_call(body, _render)
    assert info.value.status == 400


@pytest.mark.parametrize("message, code, status, param", [
    ("max_tokens: must be between 1 and max_model_len (2048), got 0", "INVALID_ARGUMENT", 400, "max_completion_tokens"),
    ("top_p must be in (0, 1], got 0.0", "INVALID_ARGUMENT", 400, "top_p"),
    ("text_input: must not be empty", "INVALID_ARGUMENT", 400, "messages"),
    ("prompt is 3000 tokens and max_tokens 16: together more than max_model_len 2048; shorten the prompt",
     "INVALID_ARGUMENT", 400, "messages"),
    ("queue full: 12 requests waiting, the limit is 12 (max_queue_requests=24); retry later", "UNAVAILABLE", 503, None),
    ("engine is shutting down; not accepting requests", "UNAVAILABLE", 503, None),
    ("server is shutting down; request not completed", "UNAVAILABLE", 503, None),
    ("model step failed: RuntimeError: boom", "INTERNAL", 500, None),
    ("failed to connect to all addresses", "UNAVAILABLE", 503, None),
    # The code decides, not the words: a fault that mentions a shutdown stays a 500, and a
    # refusal whose text names no marker is still a 503.
    ("model step failed: RuntimeError: worker is shutting down", "INTERNAL", 500, None),
    ("try again in a moment", "UNAVAILABLE", 503, None),
    ("something odd", "UNKNOWN", 500, None),
])
def test_model_errors_map_to_statuses(message, code, status, param):
    err = from_model_error(message, code, {"max_tokens": "max_completion_tokens", "text_input": "messages", "top_p": "top_p"})
    assert (err.status, err.param) == (status, param)
    assert message in err.body()["error"]["message"]
    assert ("Retry-After" in err.headers()) == (status == 503)


def test_answer_shapes():
    chat = Answer(model="m", chat=True)
    full = chat.full("Paris.", "stop", 10, 2)
    assert full["object"] == "chat.completion" and full["choices"][0]["message"] == {"role": "assistant", "content": "Paris."}
    assert full["usage"] == {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
    assert chat.chunk(text="", role=True)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chat.chunk(finish_reason="length")["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    text = Answer(model="m", chat=False)
    assert text.full("x", "length", 1, 1)["choices"][0]["text"] == "x" and text.id.startswith("cmpl-")


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("text", ["Paris", ' "quoted" \\ back', "\n\x00\u2028", "é中😀"])
def test_prerendered_delta_event_equals_the_full_chunk(chat, text):
    answer = Answer(model='m"odel', chat=chat)
    event = answer.delta_event(text)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[6:]) == answer.chunk(text=text)
