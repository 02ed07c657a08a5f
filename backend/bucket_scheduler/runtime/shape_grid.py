"""The bounded set of decode shapes a compiled step sees.

A compiled graph with static shapes (torch.compile dynamic=False, or one CUDA graph per
shape) is built once per input shape; a decode batch of any size 1..max_num_seqs would
compile up to max_num_seqs times. The grid pads each decode batch up to the next batch size
of 1, 2, 4, 8, ... (capped at max_num_seqs), so a server compiles at most log2(max_num_seqs)+2
shapes, all known at start (and warmed up there).

Dummy rows carry the pad token at position 0: they pass through the row-wise parts of the
step (norms, linears, rotary, activation), never through attention or the KV cache, and
their logits are dropped. So padding allocates no KV memory (the planner's plan is
unchanged) and does not change the real rows' numbers (rows are independent in every
row-wise op).

Columns: `col_step` > 0 rounds the decode attention window [start, end] up to a multiple of
col_step (the extra columns, on the left, are masked), for steps whose attention is inside
the compiled graph. The CPU step keeps attention eager (its window is a strided view of the
KV buffer), where extra columns would only add masked reads, so it runs with col_step 0.
"""

from __future__ import annotations

from dataclasses import dataclass


def batch_sizes(max_rows: int) -> tuple[int, ...]:
    """1, 2, 4, ... below max_rows, then max_rows itself."""
    sizes, b = [], 1
    while b < max_rows:
        sizes.append(b)
        b *= 2
    sizes.append(max(1, max_rows))
    return tuple(sizes)


@dataclass(frozen=True)
class ShapeGrid:
    sizes: tuple[int, ...]  # batch sizes, ascending
    col_step: int = 0  # 0: the attention window is not padded

    @classmethod
    def for_max_rows(cls, max_rows: int, col_step: int = 0) -> "ShapeGrid":
        return cls(batch_sizes(max_rows), col_step)

    def rows_for(self, n: int) -> int:
        """The grid's batch size for n real rows (n itself past the largest)."""
        for b in self.sizes:
            if b >= n:
                return b
        return n

    def window_start(self, start: int, end: int) -> int:
        """First column of the attention window [.., end) padded to col_step columns on the
        left, never before column 0."""
        if self.col_step <= 0:
            return start
        width = -(-(end - start) // self.col_step) * self.col_step
        return max(0, end - width)
