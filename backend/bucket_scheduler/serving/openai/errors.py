"""OpenAI's error shape, and the mapping of the model's errors onto HTTP statuses.

The status follows the error's gRPC status code: the client asks Triton to end a failed stream
with the Triton error code as its status (bucketserve_client.aio), and the model's sender picks
that code from the engine's error kind (INVALID_ARG for the validator, UNAVAILABLE for a full
queue, a drain or a shutdown, INTERNAL for a fault). Only the field a 400 is about is read from
the message: the validator's messages start with it ("max_tokens: must be ...", "top_p must be ...").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

# Retry-After (seconds) on a 503: the queue drains in about a step; a draining server is gone soon.
RETRY_AFTER_S = 1

# gRPC status code -> HTTP status; any other code (UNKNOWN, none) is a server error.
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "UNAVAILABLE": 503, "RESOURCE_EXHAUSTED": 503,
               "INTERNAL": 500, "UNIMPLEMENTED": 400}
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


def from_model_error(message: str, code: str | None, param_names: Mapping[str, str]) -> OpenAIError:
    """The model's (or Triton's) error and its gRPC status code -> an OpenAI error. param_names
    maps the model's field names onto the names the client used (max_tokens -> max_completion_tokens, ...)."""
    status = HTTP_STATUS.get(code or "", 500)
    if status == 503:
        return unavailable(message)
    if status != 400:
        return OpenAIError(status, message, "server_error", None, "internal_error")
    param = None
    head = _FIELD_HEAD.match(message)
    if head:
        field = _ALIASES.get(head.group(1), head.group(1))
        param = param_names.get(field, field)
    elif "max_model_len" in message.lower() and "max_tokens" in message.lower():
        param = param_names.get("max_tokens")
    return bad_request(message, param)
