"""The per-step prefill token budget every policy shares, and chunked prefill.

A policy decides which requests start (slots, memory, its ordering); this decides how much of
their prompts is computed in each step. Each step prefills at most `max_num_batched_tokens`
prompt tokens (vLLM's name; unlike vLLM the decode rows are not counted: every running row
decodes every step anyway), in admission order, while every row already in the batch decodes
in that same step. So a burst of admissions is spread over several steps instead of stalling
the batch's decoding behind it.

- Without chunking a request's prefill is done whole or not at all this step: the first that
  does not fit what is left of the budget waits for the next step (later ones do not overtake
  it); a prefill longer than the whole budget still goes alone when it is first in line.
- With `chunked_prefill` the first that does not fit takes what is left of the budget as a
  chunk and continues next step, first in line; it joins the decode batch (and gets its first
  token) with its last chunk. Until then it is running (holds its slot and memory) but does not
  decode; a padded runtime keeps its chunks in a staging KV of its own, which the memory plan
  charges (memory.py, BatchShape.staged_tokens).

max_num_batched_tokens None: no budget (every admitted prefill goes whole in its first step,
the behaviour before the budget existed; the engine's default is in runtime/api.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from .interface import PrefillChunk
from .request import Request


@dataclass(frozen=True)
class PrefillConfig:
    max_num_batched_tokens: int | None = None  # prompt tokens per step; None: no budget
    chunked_prefill: bool = False

    def __post_init__(self):
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1 (or None), got {self.max_num_batched_tokens}")

    @property
    def chunking(self) -> bool:
        """Whether prefills may be split (a budget to split against, and chunking on)."""
        return self.chunked_prefill and self.max_num_batched_tokens is not None


def plan_prefill(running: list[Request], cfg: PrefillConfig) -> list[PrefillChunk]:
    """This step's prefill work for the running requests still prefilling (admission order);
    counts their prefill_left down."""
    budget = cfg.max_num_batched_tokens
    room = budget if budget is not None else None
    chunks: list[PrefillChunk] = []
    for req in running:
        left = req.prefill_left
        if left <= 0:
            continue
        if room is None or left <= room:
            n = left
        elif cfg.chunking and room > 0:
            n = room
        elif not chunks and not cfg.chunking:
            n = left  # longer than the whole budget: it goes alone, or it would never go
        else:
            break  # first come first served: nothing overtakes the one that waits
        start = req.seq_len - left
        req.prefill_left = left - n
        chunks.append(PrefillChunk(req, start, start + n))
        if room is not None:
            room -= n
            if room <= 0:
                break
    return chunks


# A batched prefill runs in forwards of at most this many padded token slots (rows x longest),
# which keeps activation memory flat (the torch runner's default; the replay follows it).
PREFILL_GROUP_TOKENS = 8192


def prefill_groups(lens: list[int], max_tokens: int = PREFILL_GROUP_TOKENS) -> list[tuple[int, int]]:
    """Split a batched prefill of prompts of these lengths (in order) into forwards: index
    ranges [i, j) whose rows x longest stays within max_tokens (a longer prompt goes alone)."""
    groups, i = [], 0
    while i < len(lens):
        j, width = i + 1, lens[i]
        while j < len(lens) and max(width, lens[j]) * (j + 1 - i) <= max_tokens:
            width, j = max(width, lens[j]), j + 1
        groups.append((i, j))
        i = j
    return groups
