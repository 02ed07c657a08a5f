"""Answer bodies and server-sent-event chunks in OpenAI's shapes (completions and chat)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

DONE = b"data: [DONE]\n\n"


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n\n"


def usage(prompt_tokens: int | None, completion_tokens: int | None) -> dict:
    p, c = int(prompt_tokens or 0), int(completion_tokens or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


@dataclass
class Answer:
    """One request's answer: chat (chat.completion[.chunk]) or text (text_completion)."""

    model: str
    chat: bool
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self):
        self.id = self.id or (("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex)
        # A text delta is the one event per token: pre-render everything around its text once.
        head, tail = sse(self.chunk(text="\x00")).split(b'"\\u0000"')
        self._delta_head, self._delta_tail = head, tail

    def delta_event(self, text: str) -> bytes:
        """sse(self.chunk(text=text)), without building and encoding the whole dict per token."""
        return self._delta_head + json.dumps(text, ensure_ascii=False).encode("utf-8") + self._delta_tail

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def full(self, text: str, finish_reason: str | None, prompt_tokens: int | None, completion_tokens: int | None) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}
            body = self._head("chat.completion")
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            body = self._head("text_completion")
        body["choices"] = [choice]
        body["usage"] = usage(prompt_tokens, completion_tokens)
        return body

    def chunk(self, text: str | None = None, finish_reason: str | None = None, role: bool = False) -> dict:
        if self.chat:
            delta: dict = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            body = self._head("chat.completion.chunk")
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            body = self._head("text_completion")
        body["choices"] = [choice]
        return body

    def usage_chunk(self, prompt_tokens: int | None, completion_tokens: int | None) -> dict:
        body = self._head("chat.completion.chunk" if self.chat else "text_completion")
        body["choices"] = []
        body["usage"] = usage(prompt_tokens, completion_tokens)
        return body
