"""A request prefilled in chunks, before it joins the running batch.

The batch's rows are left-padded and all end at one column that every decode step advances
(kv_cache.py), so a half-prefilled row cannot sit in it. Its chunks go into a one-row KV of its
own instead: the first chunk is a plain prefill, each later one attends to the cached prefix
and to itself causally (the batch's multi-token decode path, over this one row). With the last
chunk its columns are copied into a new row of the batch in one place, right-aligned to the
batch's end like any newcomer's.

Memory: the staging KV is sized like a batch of one row (columns up to the request's worst
case) and shares the batch's meter; the planner charges it (memory.py, staged_tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .kv_cache import BatchKV, CacheView
from .sequence import Sequence

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, CacheView], torch.Tensor]


@dataclass
class Staged:
    seq: Sequence
    kv: BatchKV

    @classmethod
    def start(cls, seq: Sequence, batch: BatchKV) -> "Staged":
        kv = BatchKV(batch.num_layers, batch.kv_heads, batch.head_dim, batch.dtype, batch.device,
                     row_align=1, meter=batch.meter)
        return cls(seq, kv)

    @property
    def done(self) -> int:
        """Tokens computed so far."""
        return self.kv.lengths[0] if self.kv.n else 0

    def compute(self, start: int, stop: int, forward: Forward) -> torch.Tensor:
        """Compute input tokens [start, stop); returns the last position's logits [1, vocab]."""
        ids, mask, pos, view = self.inputs(start, stop)
        logits = forward(ids, mask, pos, view)
        self.commit(start, stop)
        return logits

    def inputs(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, CacheView]:
        """(ids, mask, positions, view) of the forward that computes tokens [start, stop), with
        room made for them; commit() after that forward."""
        if start != self.done or not start < stop <= len(self.seq.input_ids):
            raise RuntimeError(f"{self.seq.request_id}: chunk [{start}, {stop}) does not follow the "
                               f"{self.done} tokens computed of {len(self.seq.input_ids)}")
        ids = torch.tensor([self.seq.input_ids[start:stop]], dtype=torch.long)
        t = stop - start
        kv = self.kv
        if start == 0:
            _, write_at = kv.place_new_rows(1, t, [self.seq.worst_tokens])
            mask = torch.ones((1, t), dtype=torch.bool)
            pos = torch.arange(t, dtype=torch.long).unsqueeze(0)
            return ids, mask, pos, kv.prefill_view(0, 1, write_at)
        kv.reserve_decode(t)
        pos = torch.arange(start, stop, dtype=torch.long).unsqueeze(0)
        return ids, kv.decode_mask(t), pos, kv.decode_view()

    def commit(self, start: int, stop: int) -> None:
        """Tokens [start, stop) are in the staging KV (their forward ran)."""
        if start == 0:
            self.kv.commit_new_rows([stop], [self.seq.worst_tokens])
        else:
            self.kv.advance(stop - start)


@torch.inference_mode()
def join_all(staged: list[Staged], batch: BatchKV) -> None:
    """Copy several requests' computed KVs into new rows of the batch, placed together (one
    reallocation of the batch at most, however many join), then free their staging buffers."""
    lengths = [st.done for st in staged]
    worst = [st.seq.worst_tokens for st in staged]
    first, write_at = batch.place_new_rows(len(staged), max(lengths), worst)
    end = write_at + max(lengths)  # every row ends at the batch's end column
    for i, (st, n) in enumerate(zip(staged, lengths)):
        kv = st.kv
        for layer in range(kv.num_layers):
            batch.keys[layer][first + i, :, end - n : end].copy_(kv.keys[layer][0, :, kv.end - n : kv.end])
            batch.values[layer][first + i, :, end - n : end].copy_(kv.values[layer][0, :, kv.end - n : kv.end])
    batch.commit_new_rows(lengths, worst)
    for st in staged:
        st.kv.release()
