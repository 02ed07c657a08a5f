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

The transformers model sees a `Cache` whose layers write the new keys in place and hand
back what attention should read; `get_mask_sizes` tells the mask builder its width.
Full-attention layers only (no sliding-window models).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

_COL_ALIGN = 64  # column capacity grows in these steps (plus headroom), rows in _ROW_ALIGN
_ROW_ALIGN = 4


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


class BatchKV:
    """KV buffers of the running batch plus the per-row lengths that define the mask."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device):
        self.num_layers, self.kv_heads, self.head_dim = num_layers, kv_heads, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.rows_cap = 0
        self.cols_cap = 0
        self.n = 0  # active rows
        self.start = 0
        self.end = 0
        self.lengths: list[int] = []  # real tokens per active row

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
        """New buffers; copy the active window to [new_start, new_start + width)."""
        w = self.width
        shape = (rows_cap, self.kv_heads, cols_cap, self.head_dim)
        keys, values = [], []
        for layer in range(self.num_layers):
            k = torch.zeros(shape, dtype=self.dtype, device=self.device)
            v = torch.zeros(shape, dtype=self.dtype, device=self.device)
            if self.n and w:
                k[: self.n, :, new_start : new_start + w].copy_(self.keys[layer][: self.n, :, self.start : self.end])
                v[: self.n, :, new_start : new_start + w].copy_(self.values[layer][: self.n, :, self.start : self.end])
            keys.append(k)
            values.append(v)
        # Drop the old buffers before anything else allocates.
        self.keys, self.values = keys, values
        self.rows_cap, self.cols_cap = rows_cap, cols_cap
        self.start, self.end = new_start, new_start + w

    def _headroom(self, cols: int) -> int:
        return _round_up(cols + max(_COL_ALIGN, cols // 4), _COL_ALIGN)

    def reserve_decode(self, t: int = 1) -> None:
        """Make room for t more columns after `end`; compact when too many columns are
        outside the window (decode attends over all of them)."""
        waste = self.cols_cap - self.width
        if self.end + t <= self.cols_cap and waste <= max(2 * _COL_ALIGN, self.width // 2):
            return
        self._realloc(self.rows_cap, self._headroom(self.width + t), 0)

    def place_new_rows(self, count: int, prompt_width: int) -> tuple[int, int]:
        """Make room for `count` rows whose prompts are `prompt_width` columns; returns
        (first_row, write_at): the prefill writes columns [write_at, end) of those rows."""
        new_width = max(self.width, prompt_width)
        rows_needed = self.n + count
        rows_cap = self.rows_cap if rows_needed <= self.rows_cap else _round_up(rows_needed, _ROW_ALIGN)
        if self.n == 0:
            # Empty batch (trim() freed the buffers): fresh ones with headroom for decoding.
            self.start = self.end = 0
            self._realloc(rows_cap, self._headroom(prompt_width), 0)
            self.start, self.end = 0, prompt_width
        elif rows_cap != self.rows_cap or self.end - new_width < 0 or self.end + 1 > self.cols_cap:
            # Move the window so that it ends at new_width (its left side gets padding).
            cols = max(self.cols_cap, self._headroom(new_width))
            old_w = self.width
            self._realloc(rows_cap, cols, new_width - old_w)
            self.start = 0
        else:
            self.start = self.end - new_width
        return self.n, self.end - prompt_width

    def commit_new_rows(self, lengths: list[int]) -> None:
        self.lengths.extend(lengths)
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
            moved = last
        self.lengths.pop()
        self.n -= 1
        self.trim()
        return moved

    def trim(self) -> None:
        """Drop left columns that are padding in every row; free everything when empty."""
        if self.n == 0:
            self.keys, self.values = [], []
            self.rows_cap = self.cols_cap = 0
            self.start = self.end = 0
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
