"""Memory planner: how many sequences fit in live free memory.

KV bytes per token come from the model shape (KVSpec); the safe budget is a
fraction of what a pluggable probe reports as free, plus the KV bytes the
runner already holds for us (they are ours to reuse, and a live probe no longer
counts them as free):

    budget = memory_fraction * (probe.free_bytes() + kv_bytes_in_use)   live probes
    budget = memory_fraction * probe.free_bytes()                        fixed: / file:

A fixed: or file: figure is all the memory there is for us, our KV included
(it does not drop when we allocate), so adding what we hold would count it twice.

Planned memory of a batch (the worst case it can ever reach):

    padded      (default)  N * max_i(prompt_i + max_new_i) * bytes_per_token + activations
                           (+ each request prefilled in chunks: its own one-row staging KV)
    per_request            sum_i(prompt_i + max_new_i) * bytes_per_token + activations

"padded" is the paper's formula (N x S_max, S_max including the tokens still
to generate); it is what a padded runtime allocates. The KVSpec also carries the
runtime's layout (rows allocated in multiples of row_align; the KV held in
realloc_tensors equal tensors reallocated one at a time, so the plan reserves one
of them for that peak): the plan is what the runner really allocates.  "per_request" suits a
paged KV cache.  Each request is charged its actual prompt length (not its
bucket's upper bound): the batch is padded to its longest member, which the
max already covers.

The core knows only the probe protocol and the probes that read a setting (fixed:,
file:) or a script (tests, replay); the hardware probes live in runtime/probes.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

GIB = 1 << 30


def fmt_gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f} GiB"


@dataclass(frozen=True)
class KVSpec:
    """Model shape that decides memory per token.

    bytes_per_token = 2 (K and V) * num_layers * num_kv_heads * head_dim * dtype_bytes.
    Activation estimate per batch (one layer's live tensors at a time, plus
    last-position logits in float32):
        batch_size * seq_len * dtype_bytes * (4 * hidden_size + 2 * intermediate_size)
        + batch_size * vocab_size * 4
    hidden_size / intermediate_size / vocab_size default to 0 (no activation term).
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int = 2
    hidden_size: int = 0
    intermediate_size: int = 0
    vocab_size: int = 0
    row_align: int = 1
    realloc_tensors: int = 0  # 0: no reallocation peak to reserve (paged or simulated KV)

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def activation_bytes_per_token(self) -> int:
        return self.dtype_bytes * (4 * self.hidden_size + 2 * self.intermediate_size)

    def activation_bytes(self, batch_size: int, seq_len: int) -> int:
        if batch_size <= 0:
            return 0
        return batch_size * seq_len * self.activation_bytes_per_token + batch_size * self.vocab_size * 4


# --- probes -----------------------------------------------------------------


class MemoryProbe(Protocol):
    name: str

    def free_bytes(self) -> int: ...


class FixedProbe:
    """A constant amount of memory for us, our KV included (tests, replay, `fixed:<bytes>`)."""

    name = "fixed"
    includes_own_kv = True  # the figure does not drop when we allocate

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)

    def free_bytes(self) -> int:
        return self.nbytes


class ScriptedProbe:
    """Returns the given values one per call, then keeps repeating the last one.

    `set(n)` replaces the script with a constant; tests use it to shrink or grow
    free memory between steps.
    """

    name = "scripted"

    def __init__(self, values: Iterable[int] | Callable[[], int]):
        self._fn: Callable[[], int] | None = values if callable(values) else None
        self._it = None if callable(values) else iter(list(values))
        self._last = 0

    def set(self, nbytes: int) -> None:
        self._fn = None
        self._it = iter(())
        self._last = int(nbytes)

    def free_bytes(self) -> int:
        if self._fn is not None:
            return int(self._fn())
        self._last = int(next(self._it, self._last))
        return self._last


class FileProbe:
    """Free bytes read from a file on every call (`file:<path>`): a test or an operator can
    script memory pressure on a running server by rewriting the file. A missing or unreadable
    file reads as 0 free bytes (admit nothing new) rather than as plenty."""

    name = "file"
    includes_own_kv = True

    def __init__(self, path: str):
        self.path = path

    def free_bytes(self) -> int:
        try:
            with open(self.path) as f:
                return max(0, int(float(f.read().strip() or 0)))
        except (OSError, ValueError):
            return 0


def make_config_probe(spec: str) -> MemoryProbe | None:
    """The probes that read a setting, not the hardware: "fixed:<bytes>" and "file:<path>".
    None for any other spec (the runtime's make_probe owns the hardware ones)."""
    spec = (spec or "").strip()
    if spec.lower().startswith("file:"):
        return FileProbe(spec[5:])
    if spec.lower().startswith("fixed:"):
        raw = spec.split(":", 1)[1].replace("_", "")
        try:
            return FixedProbe(int(float(raw)))
        except ValueError:
            raise ValueError(f"memory probe {spec!r}: expected fixed:<bytes>, e.g. fixed:8000000000") from None
    return None


# --- planner ----------------------------------------------------------------


@dataclass
class BatchShape:
    """What the planner needs to know about a set of sequences: size, sum and max of worst-case
    tokens, and the worst-case tokens of those prefilled in chunks outside the batch (`staged`:
    a padded runtime keeps each in a one-row staging KV until its last chunk, then copies it in)."""

    n: int = 0
    sum_tokens: int = 0
    max_tokens: int = 0
    staged_tokens: int = 0

    def plus(self, tokens: int, staged: bool = False) -> "BatchShape":
        return BatchShape(self.n + 1, self.sum_tokens + tokens, max(self.max_tokens, tokens),
                          self.staged_tokens + (tokens if staged else 0))

    @classmethod
    def of(cls, token_counts: Iterable[int]) -> "BatchShape":
        shape = cls()
        for t in token_counts:
            shape.n += 1
            shape.sum_tokens += t
            if t > shape.max_tokens:
                shape.max_tokens = t
        return shape


class MemoryPlanner:
    """Turns a model's KV shape and a free-memory probe into admission decisions."""

    ACCOUNTING = ("padded", "per_request")

    def __init__(
        self,
        kv: KVSpec,
        probe: MemoryProbe,
        memory_fraction: float = 0.9,
        accounting: str = "padded",
    ):
        if not 0.0 < memory_fraction <= 1.0:
            raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
        if accounting not in self.ACCOUNTING:
            raise ValueError(f"accounting must be one of {self.ACCOUNTING}, got {accounting!r}")
        self.kv = kv
        self.probe = probe
        self.memory_fraction = memory_fraction
        self.accounting = accounting
        self.bytes_per_token = kv.bytes_per_token

    @staticmethod
    def worst_tokens(req) -> int:
        """Worst-case KV tokens a request can hold: its actual prompt plus max new tokens."""
        return req.prompt_len + req.max_new_tokens

    def budget_bytes(self, kv_bytes_in_use: int = 0) -> int:
        held = 0 if getattr(self.probe, "includes_own_kv", False) else max(0, kv_bytes_in_use)
        return int(self.memory_fraction * (self.probe.free_bytes() + held))

    def planned_kv_bytes(self, shape: BatchShape) -> int:
        """KV bytes a runtime with this layout allocates for the batch at most, reallocation
        peak included."""
        if shape.n == 0:
            return 0
        if self.accounting == "padded":
            rows = -(-shape.n // self.kv.row_align) * self.kv.row_align
            kv = (rows * shape.max_tokens + shape.staged_tokens) * self.bytes_per_token
        else:
            kv = shape.sum_tokens * self.bytes_per_token
        if self.kv.realloc_tensors:
            kv += -(-kv // self.kv.realloc_tensors)
        return kv

    def planned_bytes(self, shape: BatchShape) -> int:
        if shape.n == 0:
            return 0
        return self.planned_kv_bytes(shape) + self.kv.activation_bytes(shape.n, shape.max_tokens)

    def fits(self, shape: BatchShape, budget: int) -> bool:
        return self.planned_bytes(shape) <= budget

    def max_batch_size(self, tokens_per_seq: int, budget: int, cap: int | None = None) -> int:
        """Largest N whose worst case (N sequences of tokens_per_seq tokens) fits the budget."""
        per_seq = tokens_per_seq * self.bytes_per_token + self.kv.activation_bytes(1, tokens_per_seq)
        if per_seq <= 0:
            return cap if cap is not None else 1 << 30
        hi = max(0, budget // per_seq)  # planned bytes only grow with alignment and reserve
        if cap is not None:
            hi = min(hi, cap)
        lo = 0
        while lo < hi:  # the largest n whose plan fits (plans grow with n)
            mid = (lo + hi + 1) // 2
            if self.fits(BatchShape(mid, mid * tokens_per_seq, tokens_per_seq), budget):
                lo = mid
            else:
                hi = mid - 1
        return int(lo)

    def never_fits_reason(self, req, budget: int, staged: bool = False) -> str | None:
        """Why a lone request can never run under this budget (None if it can); staged: it may
        be prefilled in chunks (its staging KV counts too)."""
        need = self.planned_bytes(BatchShape().plus(self.worst_tokens(req), staged))
        if need > budget:
            return (
                f"worst-case KV {need} bytes ({fmt_gib(need)}) for prompt {req.prompt_len} + max_tokens "
                f"{req.max_new_tokens} exceeds memory budget {budget} bytes ({fmt_gib(budget)})"
            )
        return None

