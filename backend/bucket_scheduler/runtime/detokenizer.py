"""Incremental detokenization: token ids in, text deltas out.

The deltas of one sequence concatenate exactly to the text of all its tokens. Two
tokenizer habits make naive per-token decoding wrong:
- a multi-byte character split over tokens decodes to U+FFFD until its last byte
  arrives, so a delta ending in U+FFFD is held back;
- some tokenizers drop the leading space of the first token decoded, so every decode
  starts a few tokens earlier (the window's prefix) and only the new suffix is emitted.
The first window starts in the prompt's last tokens, so the first output word keeps the
space it has after the prompt.
"""

from __future__ import annotations

_PROMPT_CONTEXT = 5  # prompt tokens decoded in front of the output, for its leading space
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids: list[int], skip_special_tokens: bool = True):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            self._decode = lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)
        else:
            self._decode = lambda ids: tokenizer.decode(
                ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
            )
        self.ids: list[int] = list(prompt_ids[-_PROMPT_CONTEXT:])
        self.prefix_offset = 0  # start of the decode window
        self.read_offset = len(self.ids)  # tokens before this are already emitted
        self._prefix_text = self._decode(self.ids)  # decode(ids[prefix_offset:read_offset])
        if self._prefix_text.endswith(_REPLACEMENT):
            # The prompt ends inside a character: its bytes would merge with the output's,
            # so decode the output on its own instead.
            self.ids, self.read_offset, self._prefix_text = [], 0, ""

    def add(self, token_id: int) -> str:
        """Append one token; return the new text that is safe to emit (may be "")."""
        self.ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """At the end of the sequence: emit whatever was held back."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.read_offset == len(self.ids):
            return ""
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) <= len(self._prefix_text) or (text.endswith(_REPLACEMENT) and not final):
            # Nothing new yet, or a character still incomplete: hold back.
            return ""
        delta = text[len(self._prefix_text) :]
        # Slide the window: the new prefix is what we just emitted up to.
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        self._prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        return delta
