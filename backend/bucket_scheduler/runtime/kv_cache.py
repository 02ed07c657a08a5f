"""The running batch's KV cache: one preallocated buffer per layer, left-padded rows.

Layout per layer: keys and values of shape [row_capacity, kv_heads, col_capacity, head_dim].
Active rows are 0..n-1. All rows share one column window [start, end): a row holding
`length` tokens keeps them in the last `length` columns of the window (left padding), so
a decode step writes every row's new token at column `end` and the window grows by one.

Why this shape:
- Decode writes in place (no torch.cat of the whole cache every step).
- A decode step attends over the rows' whole buffer, buffer[:n], which is contiguous:
  slicing the column window instead made every attention matmul copy K and V (that
  copy cost more than the attention itself). Columns outside a row's tokens are masked;
  the buffer is compacted when such columns pass a quarter-ish of its width.
- Joining new sequences is a prefill written straight into free rows, right-aligned to
  `end`, with the window widened to the left if the newcomers are longer.
- Removing a sequence moves the last row into its place (one row copied), and columns on
  the left that became padding in every row are dropped by moving `start` (no copy).

Memory: the buffers never hold more than the MemoryPlanner plans for the running set
(plan_spec() hands it this layout). Every (re)allocation is sized to the current rows:
rows rounded up to ROW_ALIGN, columns at most the longest worst case (prompt +
max_tokens) among them; reallocation goes one tensor at a time, so the peak is the larger
of the old and the new total plus one tensor, which the plan reserves.

The transformers model sees a `Cache` whose layers write the new keys in place and hand
back what attention should read; `get_mask_sizes` tells the mask builder its width.
Full-attention layers only (no sliding-window models).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

_COL_ALIGN = 64  # column capacity grows in these steps (plus headroom), up to the rows' worst case
ROW_ALIGN = 4  # rows are allocated in multiples of this (fewer reallocations as rows join)


def plan_spec(spec):
    """The core's KVSpec with this cache's layout, so the planner plans what we allocate."""
    return replace(spec, row_align=ROW_ALIGN, realloc_tensors=2 * spec.num_layers)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class _ViewLayer(CacheLayerMixin):
    """One layer of a `CacheView`: writes the new keys into the shared buffer."""

    is_sliding = False

    def __init__(self, view: "CacheView", idx: int):
        super().__init__()
        self._view = view
        self._idx = idx
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:  # buffers exist already
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        return self._view._write(self._idx, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._view.kv_length(query_length), 0

    def get_seq_length(self) -> int:
        return self._view.past

    def get_max_length(self) -> int:
        return -1


class CacheView(Cache):
    """What one forward pass sees.

    decode: rows [0, n); the new token goes to column `end`; attention reads the rows'
    whole buffer (the mask hides what is not theirs). past = end, so the causal mask
    hides every column after the new token.
    prefill: rows [r0, r1) with no past; the new keys are copied into columns
    [write_at, write_at + t) and attention reads them directly.
    """

    def __init__(self, kv: "BatchKV", r0: int, r1: int, write_at: int, decode: bool):
        self._kv = kv
        self._r0, self._r1 = r0, r1
        self._write_at = write_at
        self._decode = decode
        super().__init__(layers=[_ViewLayer(self, i) for i in range(kv.num_layers)])

    @property
    def buffers(self) -> "BatchKV":
        """The KV this view writes into (the batch's, or a staging KV's)."""
        return self._kv

    def target(self) -> tuple[int, int, int, bool]:
        """(first row, end row, first column written, decode?) for a forward of our own."""
        return self._r0, self._r1, self._write_at, self._decode

    @property
    def past(self) -> int:
        return self._write_at if self._decode else 0

    def kv_length(self, query_length: int) -> int:
        return self._kv.cols_cap if self._decode else query_length

    def _write(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        t = k.shape[-2]
        end = self._write_at + t
        kb, vb = self._kv.keys[layer], self._kv.values[layer]
        kb[self._r0 : self._r1, :, self._write_at : end].copy_(k)
        vb[self._r0 : self._r1, :, self._write_at : end].copy_(v)
        if self._decode:
            return kb[self._r0 : self._r1], vb[self._r0 : self._r1]
        return k, v


class KVMeter:
    """The bytes several KV objects (the batch and the staging KVs of chunked prefills) hold
    together, and the most they held at once, reallocation peaks included."""

    def __init__(self):
        self.kvs: list["BatchKV"] = []
        self.peak_bytes = 0

    def held(self) -> int:
        return sum(kv.nbytes() for kv in self.kvs)

    def note(self, extra: int = 0) -> None:
        """Record what is held now plus `extra` bytes in flight (a tensor being copied)."""
        self.peak_bytes = max(self.peak_bytes, self.held() + extra)


class BatchKV:
    """KV buffers of the running batch plus the per-row lengths that define the mask.

    Also the staging KV of one request prefilled in chunks (row_align 1): its chunks extend it
    the way decode steps extend the batch, and its rows are copied into the batch in one piece
    with the last chunk (runner.py)."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device,
                 row_align: int = ROW_ALIGN, meter: KVMeter | None = None):
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.row_align = row_align
        self.meter = meter or KVMeter()  # shared by the runner's KV objects: one peak for all
        self.meter.kvs.append(self)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.rows_cap = 0
        self.cols_cap = 0
        self.n = 0  # active rows
        self.start = 0
        self.end = 0
        self.lengths: list[int] = []  # real tokens per active row
        self.worst: list[int] = []  # per active row: the most tokens it can ever hold

    @property
    def peak_bytes(self) -> int:
        """The most bytes held at once by this KV and those sharing its meter, reallocations
        included (tests, metrics); assignable, to restart the measurement."""
        return self.meter.peak_bytes

    @peak_bytes.setter
    def peak_bytes(self, value: int) -> None:
        self.meter.peak_bytes = value

    def release(self) -> None:
        """Free the buffers and leave the meter (a staging KV whose request joined or left)."""
        self.n = 0
        self.trim()
        if self in self.meter.kvs:
            self.meter.kvs.remove(self)

    # -- sizes -----------------------------------------------------------------
    @property
    def width(self) -> int:
        return self.end - self.start

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.keys) + sum(t.nbytes for t in self.values)

    def attended_slots(self, t: int = 1) -> int:
        """KV slots a decode step attends (n rows x whole buffer width)."""
        return self.n * self.cols_cap

    # -- allocation ----------------------------------------------------------------
    def _realloc(self, rows_cap: int, cols_cap: int, new_start: int) -> None:
        """New buffers; copy the active window to [new_start, new_start + width). One tensor at
        a time, so at most one old tensor and its new copy coexist beyond the larger total."""
        w = self.width
        shape = (rows_cap, self.kv_heads, cols_cap, self.head_dim)
        meter = self.meter
        meter.note()
        n = min(self.n, rows_cap)
        for bufs in (self.keys, self.values) if self.keys else ():
            for layer, old in enumerate(bufs):
                new = torch.empty(shape, dtype=self.dtype, device=self.device)
                meter.note(new.nbytes)
                if n and w:
                    new[:n, :, new_start : new_start + w].copy_(old[:n, :, self.start : self.end])
                    # Zeros everywhere else (masked columns are read by attention with weight 0:
                    # they must hold no NaN); written once, not zero-filled and then overwritten.
                    new[:n, :, :new_start].zero_()
                    new[:n, :, new_start + w :].zero_()
                    new[n:].zero_()
                else:
                    new.zero_()
                bufs[layer] = new  # the old tensor is freed here
        if not self.keys:
            self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]
            self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]
            meter.note()
        self.rows_cap, self.cols_cap = rows_cap, cols_cap
        self.start, self.end = new_start, new_start + w

    def _cols_for(self, needed: int, worst: int) -> int:
        """Columns to allocate when `needed` must fit now: growth headroom, but never past the
        longest worst case of the rows (what the plan charges)."""
        return max(needed, min(worst, _round_up(needed + max(_COL_ALIGN, needed // 4), _COL_ALIGN)))

    def reserve_decode(self, t: int = 1) -> None:
        """Make room for t more columns after `end`; compact when too many columns are
        outside the window (decode attends over all of them)."""
        waste = self.cols_cap - self.width
        if self.end + t <= self.cols_cap and waste <= max(2 * _COL_ALIGN, self.width // 2):
            return
        self._realloc(_round_up(self.n, self.row_align), self._cols_for(self.width + t, max(self.worst)), 0)

    def shrink_to_fit(self, limit_bytes: int) -> None:
        """Give memory back when we hold more than limit_bytes (the budget dropped, or rows
        left): reallocate to exactly what the rows need now."""
        if self.n and self.nbytes() > limit_bytes:
            self._realloc(_round_up(self.n, self.row_align), self._cols_for(self.width + 1, max(self.worst)), 0)

    def fit_rows(self) -> None:
        """Reallocate when the buffers are larger than the plan of the rows held now (rows or a
        longer worst case left since the last allocation), before memory is taken elsewhere."""
        if self.n and (self.rows_cap > _round_up(self.n, self.row_align) or self.cols_cap > max(self.worst)):
            self._realloc(_round_up(self.n, self.row_align), self._cols_for(self.width + 1, max(self.worst)), 0)

    def place_new_rows(self, count: int, prompt_width: int, worst: list[int]) -> tuple[int, int]:
        """Make room for `count` rows whose prompts are `prompt_width` columns and whose worst
        cases are `worst`; returns (first_row, write_at): the prefill writes columns
        [write_at, end) of those rows."""
        new_width = max(self.width, prompt_width)
        rows_needed = self.n + count
        max_worst = max(self.worst + list(worst))
        if self.n == 0:
            # Empty batch (trim() freed the buffers): fresh ones with headroom for decoding.
            self.keys, self.values = [], []
            self.start = self.end = 0
            self._realloc(_round_up(rows_needed, self.row_align), self._cols_for(prompt_width + 1, max_worst), 0)
            self.start, self.end = 0, prompt_width
        elif rows_needed > self.rows_cap or self.end - new_width < 0 or self.end + 1 > self.cols_cap:
            # Sized to the new set of rows; the window moves to end at new_width (its left
            # side gets padding).
            old_w = self.width
            self._realloc(_round_up(rows_needed, self.row_align), self._cols_for(new_width + 1, max_worst), new_width - old_w)
            self.start = 0
        else:
            self.start = self.end - new_width
        return self.n, self.end - prompt_width

    def commit_new_rows(self, lengths: list[int], worst: list[int]) -> None:
        """The new rows are written: `lengths` tokens each, `worst` at most (as placed)."""
        self.lengths.extend(lengths)
        self.worst.extend(worst)
        self.n += len(lengths)

    def advance(self, t: int = 1) -> None:
        """After a decode forward wrote t columns for every active row."""
        self.end += t
        self.lengths = [x + t for x in self.lengths]

    # -- removal -------------------------------------------------------------------------
    def remove_row(self, row: int) -> int | None:
        """Drop a row; the last row moves into its place. Returns the moved row's old index
        (None if nothing moved)."""
        last = self.n - 1
        moved = None
        if row != last:
            for layer in range(self.num_layers):
                self.keys[layer][row, :, self.start : self.end].copy_(self.keys[layer][last, :, self.start : self.end])
                self.values[layer][row, :, self.start : self.end].copy_(self.values[layer][last, :, self.start : self.end])
            self.lengths[row] = self.lengths[last]
            self.worst[row] = self.worst[last]
            moved = last
        self.lengths.pop()
        self.worst.pop()
        self.n -= 1
        self.trim()
        return moved

    def trim(self) -> None:
        """Drop left columns that are padding in every row; free everything when empty."""
        if self.n == 0:
            self.keys, self.values = [], []
            self.rows_cap = self.cols_cap = 0
            self.start = self.end = 0
            self.lengths, self.worst = [], []
            return
        self.start = max(self.start, self.end - max(self.lengths))

    # -- views for the model --------------------------------------------------------------
    def decode_view(self) -> CacheView:
        return CacheView(self, 0, self.n, self.end, decode=True)

    def prefill_view(self, first_row: int, count: int, write_at: int) -> CacheView:
        return CacheView(self, first_row, first_row + count, write_at, decode=False)

    def decode_mask(self, t: int = 1) -> torch.Tensor:
        """[n, cols_cap] bool: True on each row's tokens, the t new ones included."""
        lengths = torch.tensor(self.lengths, device=self.device)
        cols = torch.arange(self.cols_cap, device=self.device).unsqueeze(0)
        return (cols >= (self.end - lengths).unsqueeze(1)) & (cols < self.end + t)
