"""OpenAI request bodies -> the model's inputs and parameters.

Only OpenAI-shape checks happen here (n != 1, no messages, a list where a number belongs, a
feature we do not have). Values go on untouched as Triton request parameters, so the model's
own validator (serving/validation.py) judges ranges and types exactly as it does for every
other client, and its message comes back as the 400. Two fields travel as input tensors
instead: `stop` (a list) and `priority` (Triton reserves the parameter name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import bad_request

# OpenAI sampling fields and BucketServe's own extra body fields (as vLLM accepts its own):
# request field -> model field. Sent as request parameters.
SAMPLING_FIELDS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed"}
EXTRA_FIELDS = {
    "top_k": "top_k",
    "request_class": "request_class",
    "slo_ttft_ms": "slo_ttft_ms",
    "slo_tpot_ms": "slo_tpot_ms",
    "ignore_eos": "ignore_eos",
    "min_tokens": "min_tokens",
}
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


@dataclass
class Call:
    """One model call: what bucketserve_client.aio's stream() takes, plus the names to report."""

    model: str
    prompt: str
    stream: bool
    include_usage: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # input tensors: stop, priority, exclude_input_in_output
    # model field -> the request field it came from, to name `param` in a 400
    param_names: dict[str, str] = field(default_factory=dict)


def _model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model: required, the name of a served model (GET /v1/models lists them)", "model")
    return model


def _unsupported(body: dict, checks: dict[str, Callable[[Any], bool]]) -> None:
    """Refuse features that would silently change the answer if ignored."""
    for name, is_used in checks.items():
        if name in body and body[name] is not None and is_used(body[name]):
            raise bad_request(f"{name}: not supported by this server", name, "unsupported_parameter")


def _parameter(call: Call, name: str, value: Any, model_field: str) -> None:
    if value is None:
        return
    if isinstance(value, (list, dict)):
        raise bad_request(f"{name}: expected a single value, got a {'list' if isinstance(value, list) else 'object'}", name)
    if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        value = str(value)  # past int64: the validator reads the text and names the range
    call.parameters[model_field] = value
    call.param_names[model_field] = name


def _common(body: dict, call: Call, token_fields: tuple[str, ...]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise bad_request(f"n: only n=1 is supported, got {n!r}", "n")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad_request(f"stream: expected true or false, got {stream!r}", "stream")
    call.stream = bool(stream)
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise bad_request("stream_options: expected an object", "stream_options")
        if not call.stream:
            raise bad_request("stream_options: only allowed when stream is true", "stream_options")
        call.include_usage = bool(options.get("include_usage", False))
    for name in token_fields:  # the first one sent wins (max_completion_tokens over max_tokens)
        if body.get(name) is not None:
            _parameter(call, name, body[name], "max_tokens")
            break
    for name, model_field in {**SAMPLING_FIELDS, **EXTRA_FIELDS}.items():
        _parameter(call, name, body.get(name), model_field)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise bad_request("stop: expected a string or a list of strings", "stop")
        if stops:
            call.options["stop"] = stops
            call.param_names["stop"] = "stop"
    priority = body.get("priority")
    if priority is not None:
        # An input tensor (INT32), since Triton reserves the `priority` request parameter.
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise bad_request(f"priority: expected an integer, got {priority!r}", "priority")
        if not INT32[0] <= priority <= INT32[1]:
            raise bad_request(f"priority: must fit in a 32-bit integer, got {priority}", "priority")
        call.options["priority"] = priority
        call.param_names["priority"] = "priority"
    for penalty in ("frequency_penalty", "presence_penalty"):
        value = body.get(penalty)
        if value not in (None, 0, 0.0):
            raise bad_request(f"{penalty}: not supported by this server (only 0)", penalty, "unsupported_parameter")


def completion_call(body: dict) -> Call:
    """POST /v1/completions."""
    call = Call(model=_model(body), prompt="", stream=False)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise bad_request("prompt: send one prompt as a string (lists of prompts and token ids are not supported)", "prompt")
    if not isinstance(prompt, str):
        raise bad_request("prompt: required, a string", "prompt")
    _unsupported(body, {"logprobs": lambda v: True, "suffix": lambda v: v != "", "best_of": lambda v: v != 1,
                        "logit_bias": lambda v: bool(v)})
    _common(body, call, ("max_tokens",))
    call.prompt = prompt
    call.param_names["text_input"] = "prompt"
    echo = body.get("echo")
    if echo is not None:
        if not isinstance(echo, bool):
            raise bad_request(f"echo: expected true or false, got {echo!r}", "echo")
        call.options["exclude_input_in_output"] = not echo
    return call


def chat_messages(body: dict) -> list[dict[str, str]]:
    """The messages as [{"role", "content"}] with text content; content parts are joined."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: required, a non-empty list of {role, content}", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(f"messages[{i}]: expected an object with a role", "messages")
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad_request(f"messages[{i}].content: only text parts are supported", "messages")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise bad_request(f"messages[{i}].content: expected a string or a list of text parts", "messages")
        out.append({"role": m["role"], "content": content})
    return out


def chat_call(body: dict, render: Callable[[str, list[dict[str, str]]], str]) -> Call:
    """POST /v1/chat/completions. render(model, messages) applies the model's chat template."""
    call = Call(model=_model(body), prompt="", stream=False)
    messages = chat_messages(body)
    _unsupported(body, {"logprobs": lambda v: bool(v), "top_logprobs": lambda v: bool(v), "logit_bias": lambda v: bool(v),
                        "tools": lambda v: bool(v), "functions": lambda v: bool(v),
                        "response_format": lambda v: not (isinstance(v, dict) and v.get("type") == "text")})
    _common(body, call, ("max_completion_tokens", "max_tokens"))
    call.prompt = render(call.model, messages)
    call.param_names["text_input"] = "messages"
    return call
