"""The one way a chat becomes a prompt: the model's own chat template, ending where the
assistant's answer starts. The OpenAI front end renders chats with it; the engine's
`apply_chat_template` input (one user message) is the same rendering of a one-message chat."""

from __future__ import annotations


def render_chat(tokenizer, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
