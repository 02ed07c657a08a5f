"""Streaming text: deltas concatenate exactly to the decoded text, multi-byte included."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bucket_scheduler.runtime.detokenizer import IncrementalDetokenizer

TEXTS = [
    "The capital of France is Paris.",
    "  leading spaces and trailing  ",
    "Café naïve über 東京 日本語 Здравствуй 🙂 ∑∞≤≥",
    "🙂🙂🙂 emoji in a row, then words",
    "line one\nline two\n\ttabbed",
]


def stream(tok, prompt_ids, ids):
    detok = IncrementalDetokenizer(tok, prompt_ids)
    deltas = [detok.add(t) for t in ids]
    deltas.append(detok.flush())
    return deltas


def check(tok, prompt_ids, ids):
    deltas = stream(tok, prompt_ids, ids)
    whole = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert "".join(deltas) == whole
    # Nothing half-made is ever handed out (except at the very end).
    assert not any(d.endswith("\ufffd") for d in deltas[:-1] if d) or "\ufffd" in whole


def test_known_texts(tiny):
    _, tok = tiny
    prompt = tok.encode("Question: ")
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        check(tok, prompt, ids)
        assert "".join(stream(tok, prompt, ids)) == text


def test_multibyte_split_over_tokens_is_held_back(tiny):
    _, tok = tiny
    ids = tok.encode("東", add_special_tokens=False)
    assert len(ids) > 1  # byte-level: the character spans several tokens
    deltas = stream(tok, [], ids)
    assert deltas[: len(ids) - 1] == [""] * (len(ids) - 1)  # held back until the last byte
    assert deltas[len(ids) - 1] == "東"
    assert "".join(deltas) == "東"


@settings(max_examples=60, deadline=None)
@given(text=st.text(min_size=1, max_size=40))
def test_any_text(tiny, text):
    _, tok = tiny
    ids = tok.encode(text, add_special_tokens=False)
    check(tok, tok.encode("Say: "), ids)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_token_ids(tiny, data):
    """Arbitrary ids (broken UTF-8, special tokens) still concatenate to the full decode."""
    _, tok = tiny
    ids = data.draw(st.lists(st.integers(0, len(tok) - 1), min_size=1, max_size=30))
    prompt = data.draw(st.lists(st.integers(0, len(tok) - 1), max_size=8))
    deltas = stream(tok, prompt, ids)
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
