"""One request's generation state: tokens so far, stop rules and the text it has emitted."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .api import FINISH_ERROR, FINISH_LENGTH, FINISH_STOP, SamplingParams
from .detokenizer import IncrementalDetokenizer


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    eos_ids: frozenset[int]
    detok: IncrementalDetokenizer
    generator: torch.Generator | None = None
    output_ids: list[int] = field(default_factory=list)
    text: str = ""  # output text so far, stop string removed
    emitted: int = 0  # characters of `text` handed out as deltas
    finish_reason: str | None = None
    error: str | None = None  # why it ended with FINISH_ERROR

    @property
    def worst_tokens(self) -> int:
        """The most KV tokens this sequence can ever hold (what the memory planner charges)."""
        return len(self.prompt_ids) + self.params.max_tokens

    @property
    def input_ids(self) -> list[int]:
        """What a (re)prefill feeds: the prompt plus every token already produced
        (a preempted sequence is recomputed, not resampled)."""
        return self.prompt_ids + self.output_ids

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def banned_ids(self) -> list[int] | None:
        """EOS may not be picked before min_tokens (as vLLM does)."""
        if len(self.output_ids) < self.params.min_tokens and not self.params.ignore_eos:
            return sorted(self.eos_ids)
        return None

    def fail(self, message: str) -> None:
        """End this sequence alone with an error (its own input made its step fail)."""
        self.finish_reason = FINISH_ERROR
        self.error = message

    def append(self, token_id: int) -> None:
        """Take one new token: update text and stop state."""
        self.output_ids.append(token_id)
        n = len(self.output_ids)
        p = self.params
        if token_id in self.eos_ids and not p.ignore_eos and n - 1 >= p.min_tokens:
            self.text += self.detok.flush()
            self.finish_reason = FINISH_STOP
            return
        self.text += self.detok.add(token_id)
        if p.stop and n >= p.min_tokens and self._cut_at_stop():
            self.finish_reason = FINISH_STOP
            return
        if n >= p.max_tokens:
            self.text += self.detok.flush()
            cut = bool(p.stop) and n >= p.min_tokens and self._cut_at_stop()
            self.finish_reason = FINISH_STOP if cut else FINISH_LENGTH

    def _cut_at_stop(self) -> bool:
        # Only the tail can hold a new match: text before `emitted` was checked already.
        longest = max(len(s) for s in self.params.stop)
        lo = max(0, self.emitted - longest + 1)
        best = None
        for s in self.params.stop:
            if not s:
                continue
            i = self.text.find(s, lo)
            if i != -1 and (best is None or i < best):
                best = i
        if best is None:
            return False
        self.text = self.text[:best]
        return True

    def take_delta(self) -> str:
        """Text safe to hand out now. While running, a tail that could still grow into a
        stop string is held back; once finished, everything left goes."""
        end = len(self.text)
        if not self.finished and self.params.stop:
            end -= self._stop_prefix_overlap()
        delta = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return delta

    def _stop_prefix_overlap(self) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self.params.stop:
            for k in range(min(len(s) - 1, len(self.text) - self.emitted), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best
