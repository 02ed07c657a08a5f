"""OpenAI's error shape, and the mapping of the model's error messages onto HTTP statuses.

Triton's gRPC stream carries an error as its message only (the INVALID_ARG / UNAVAILABLE code
is not in ModelStreamInferResponse), so the status is read from the message: the model's
UNAVAILABLE and INTERNAL messages are few and fixed (runtime/engine.py, serving/sender.py);
every other error the model answers with is its validator's INVALID_ARG, whose messages start
with the field they are about ("max_tokens: must be ...", "top_p must be ...").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

# Retry-After (seconds) on a 503: the queue drains in about a step; a draining server is gone soon.
RETRY_AFTER_S = 1

UNAVAILABLE_MARKERS = ("queue full", "shutting down", "not accepting", "unhealthy", "request not completed",
                       "not finished within drain")
INTERNAL_MARKERS = ("internal engine error", "model step failed", "engine refused the request",
                    "the engine failed this request", "engine shut down before")
# The field named at the head of a validator message: "max_tokens: ...", "top_p must ...".
_FIELD_HEAD = re.compile(r"^\s*([a-z_]+)(?::|\s+must\b|\s+is\b)")
# Engine-side names that differ from the request's.
_ALIASES = {"req_class": "request_class", "prompt": "text_input"}


@dataclass
class OpenAIError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_S)} if self.status == 503 else {}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", param, code)


def model_not_found(model: str, served: list[str]) -> OpenAIError:
    return OpenAIError(404, f"The model `{model}` does not exist. Served models: {', '.join(served) or 'none'}",
                       "invalid_request_error", "model", "model_not_found")


def unavailable(message: str) -> OpenAIError:
    return OpenAIError(503, message, "service_unavailable", None, "service_unavailable")


def from_model_error(message: str, param_names: Mapping[str, str]) -> OpenAIError:
    """The model's (or Triton's) error message -> an OpenAI error. param_names maps the model's
    field names onto the names the client used (max_tokens -> max_completion_tokens, ...)."""
    low = message.lower()
    if any(m in low for m in UNAVAILABLE_MARKERS):
        return unavailable(message)
    if any(m in low for m in INTERNAL_MARKERS):
        return OpenAIError(500, message, "server_error", None, "internal_error")
    if "failed to connect" in low or "connection refused" in low or "unavailable" in low:
        return unavailable(f"the inference server is not reachable: {message}")
    param = None
    head = _FIELD_HEAD.match(message)
    if head:
        field = _ALIASES.get(head.group(1), head.group(1))
        param = param_names.get(field, field)
    elif "max_model_len" in low and "max_tokens" in low:
        param = param_names.get("max_tokens")
    return bad_request(message, param)
