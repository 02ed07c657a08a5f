"""Chat templates for /v1/chat/completions, rendered here with each model's own tokenizer.

Why here and not in the model: a chat is a list of messages, and the model's inputs carry one
prompt string (its `apply_chat_template` input wraps a single user message). Rendering the
whole list in the front end keeps the model's interface and validator as they are; the model
then judges the rendered prompt like any other (length, max_model_len). The tokenizer comes
from the model's local directory (the one its engine loads), so the template is the model's.
For a single user message the result is the prompt the engine builds for apply_chat_template.
"""

from __future__ import annotations

import threading
from pathlib import Path

from bucket_scheduler.chat_template import render_chat

from .errors import bad_request


def chat_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """messages -> the model's text_input."""
    text = render_chat(tokenizer, messages)
    # The engine tokenizes text_input with add_special_tokens=True. A tokenizer that prepends BOS
    # there would double the BOS a template already writes (Llama 3 style): drop the template's.
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos):]
    return text


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == getattr(tokenizer, "bos_token_id", None)


class ChatTemplates:
    """model name -> tokenizer directory; tokenizers load once, on first use (or preload())."""

    def __init__(self, model_dirs: dict[str, str], trust_remote_code: dict[str, bool] | None = None):
        self._dirs = dict(model_dirs)
        self._trust = dict(trust_remote_code or {})
        self._tokenizers: dict[str, object] = {}
        self._lock = threading.Lock()

    def preload(self) -> None:
        for name in self._dirs:
            try:
                self._tokenizer(name)
            except Exception:  # noqa: BLE001 - reported on the first chat request for that model
                pass

    def _tokenizer(self, model: str):
        with self._lock:
            tok = self._tokenizers.get(model)
            if tok is None:
                path = self._dirs.get(model)
                if not path or not Path(path).is_dir():
                    raise bad_request(f"model `{model}` has no local tokenizer directory to take a chat template from; "
                                      "use /v1/completions", "model", "no_chat_template")
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=self._trust.get(model, False))
                self._tokenizers[model] = tok
            return tok

    def render(self, model: str, messages: list[dict[str, str]]) -> str:
        tok = self._tokenizer(model)
        if not getattr(tok, "chat_template", None):
            raise bad_request(f"model `{model}` has no chat template; use /v1/completions", "messages", "no_chat_template")
        try:
            return chat_prompt(tok, messages)
        except Exception as exc:  # noqa: BLE001 - the template's own checks (roles must alternate, ...)
            raise bad_request(f"messages: the chat template refused them: {exc}", "messages") from None
