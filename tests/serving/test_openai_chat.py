"""Chat prompts for the OpenAI API: the model's own template over the whole conversation, and no
doubled BOS when the engine's tokenizer adds one to text_input itself."""

from __future__ import annotations

import pytest

from bucket_scheduler.chat_template import render_chat
from bucket_scheduler.serving.openai.chat import ChatTemplates, chat_prompt
from bucket_scheduler.serving.openai.errors import OpenAIError


@pytest.fixture(scope="module")
def tiny_dir():
    from bucket_scheduler.runtime.models import resolve_model

    return str(resolve_model("tiny"))


def test_whole_conversation_in_the_models_template(tiny_dir):
    templates = ChatTemplates({"tiny": tiny_dir})
    one = templates.render("tiny", [{"role": "user", "content": "Hi"}])
    many = templates.render("tiny", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Again"}])
    assert "Hi" in one and all(t in many for t in ("Be brief.", "Hello.", "Again"))
    assert len(many) > len(one)
    with pytest.raises(OpenAIError) as info:
        templates.render("unknown", [{"role": "user", "content": "Hi"}])
    assert info.value.status == 400


class BosTokenizer:
    """A tokenizer whose template writes BOS and whose encode adds BOS too (Llama 3 style)."""

    bos_token, bos_token_id = "<s>", 1

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return "<s>" + "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [5] * len(text)}


def test_bos_is_not_doubled():
    msgs = [{"role": "user", "content": "Hi"}]
    assert render_chat(BosTokenizer(), msgs).startswith("<s>")
    assert chat_prompt(BosTokenizer(), msgs) == "[user]Hi[assistant]"
