"""Runs the batch the scheduler chose: prefill newcomers into free rows of the running
batch, decode every row one token per step, sample, and drop rows at once.

The rows follow the scheduler's output: the engine hands prefill its newcomers and `drop` the
requests the scheduler preempted or ended; a row whose sequence finished (its own state)
leaves the batch right after the token that finished it.

The model is any transformers causal LM with full attention; it sees our `CacheView`
(see kv_cache.py) plus a left-padded 2D attention mask and explicit position ids, so a
row's numbers do not depend on its neighbours or on the padding in front of it.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Callable

import torch

from ..core.prefill import PREFILL_GROUP_TOKENS, prefill_groups
from .compiled_graph import DecodeGraph
from .compiled_step import StepPieces
from .fast_step import EAGER, Segment, lean_step_for
from .kv_cache import BatchKV
from .sampling import choose, prepare_logits
from .sequence import Sequence
from .shape_grid import ShapeGrid
from .staging import Staged, join_all

log = logging.getLogger("bucketserve.runner")


@dataclass
class RunnerCounters:
    prefill_tokens: int = 0  # useful prompt tokens computed
    prefill_slots: int = 0  # computed token slots (useful + padding)
    decode_tokens: int = 0  # rows decoded
    decode_kv_slots: int = 0  # KV slots attended (rows x buffer width), padding included
    decode_kv_tokens: int = 0  # of which real tokens
    prefill_calls: int = 0
    decode_calls: int = 0


class Runner:
    def __init__(
        self,
        model,
        tokenizer,
        max_prefill_tokens: int = PREFILL_GROUP_TOKENS,
        on_logits: Callable[[Sequence, torch.Tensor], None] | None = None,
        fast_path: bool = True,
        compile: str = "off",
        max_rows: int = 32,
    ):
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
            layer_types = getattr(cfg, "layer_types", None) or []
            if any(t != "full_attention" for t in layer_types):
                raise ValueError("models with sliding-window attention layers are not supported by the runner")
        heads = cfg.num_attention_heads
        self.kv = BatchKV(
            num_layers=cfg.num_hidden_layers,
            kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            dtype=self.dtype,
            device=self.device,
        )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.max_prefill_tokens = max(1, max_prefill_tokens)
        self.on_logits = on_logits  # tests: every row's logits, every step
        self.fault_hook: Callable[[str, list[Sequence]], None] | None = None  # tests: may raise
        self.rows: list[Sequence] = []
        self._index: dict[str, int] = {}  # request id -> row
        # Requests prefilled in chunks, not in the batch yet: each in a one-row KV of its own
        # (staging.py), sharing the batch's memory meter.
        self.staging: dict[str, Staged] = {}
        self.counters = RunnerCounters()
        # transformers 5.x renamed the forward's cache argument; accept either spelling.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_arg = "logits_to_keep" if "logits_to_keep" in params else None
        # Our own forward for Llama-family models (fast_step.py); transformers' for the rest.
        self.lean = lean_step_for(model) if fast_path else None
        self.lean_calls = 0  # forwards the lean step computed (tests: it really ran)
        # The decode step's row-wise pieces, compiled per the `compile` setting (eager without
        # the lean step); with static shapes, decode batches are padded to the shape grid.
        self.pieces = EAGER
        if compile != "off" and self.lean is None:
            log.warning("compile=%s needs the lean step (fast_path, a Llama-family model): running eager", compile)
        elif compile == "inductor-graph":
            self.pieces = DecodeGraph(self.lean, model)
        elif compile != "off":
            self.pieces = StepPieces(compile)
        self.grid = ShapeGrid.for_max_rows(max_rows) if self.pieces.static_shapes else None  # eager: no padding

    def warm_up(self) -> None:
        """Compile the decode step for every shape it can take now (static shapes: each grid
        batch size; dynamic: one symbolic graph plus batch size 1), so no request waits for it."""
        if self.pieces.compiled:
            self.pieces.warm_up(self.lean, self.grid.sizes if self.grid else (2, 1))

    # -- state ---------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return len(self.rows)

    def kv_bytes(self) -> int:
        """Bytes the KV tensors hold right now, staging KVs included (what the MemoryPlanner is told)."""
        return self.kv.meter.held()

    def shrink_to_fit(self, budget_bytes: int) -> None:
        """The budget fell below what we hold (memory pressure): the batch KV gives back what it
        can within what the staging KVs of half-prefilled prompts leave of the budget."""
        self.kv.shrink_to_fit(budget_bytes - (self.kv_bytes() - self.kv.nbytes()))

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._index or request_id in self.staging

    # -- the three operations ------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence]) -> None:
        """Compute the prompts of `seqs`, join them to the batch and sample their first token."""
        if not seqs:
            return
        if self.fault_hook:
            self.fault_hook("prefill", seqs)
        inputs = [s.input_ids for s in seqs]
        width = max(len(x) for x in inputs)
        worst = [s.worst_tokens for s in seqs]
        first_row, _ = self.kv.place_new_rows(len(seqs), width, worst)
        logits_rows: list[torch.Tensor] = []
        # Row groups bounded by max_prefill_tokens keep activation memory flat (the core's rule:
        # the replay simulator splits the same way).
        for i, j in prefill_groups([len(x) for x in inputs], self.max_prefill_tokens):
            group_w = max(len(x) for x in inputs[i:j])
            logits_rows.append(self._prefill_group(inputs[i:j], first_row + i, group_w))
        logits = torch.cat(logits_rows)
        self.kv.commit_new_rows([len(x) for x in inputs], worst)
        for s in seqs:
            self._index[s.request_id] = len(self.rows)
            self.rows.append(s)
        self._sample_and_append(seqs, logits)

    @torch.inference_mode()
    def prefill_chunk(self, seq: Sequence, start: int, stop: int) -> bool:
        """Compute tokens [start, stop) of `seq`'s prefill (its input_ids) into its staging KV
        while the batch keeps decoding. With the last chunk its KV joins the batch in one
        place and its first token is sampled; returns whether it joined."""
        if self.fault_hook:
            self.fault_hook("prefill", [seq])
        logits = self._staged(seq).compute(start, stop, self._forward)
        joined = self._chunk_done(seq, start, stop)
        if joined:
            self._sample_and_append([seq], logits)
        return joined

    @property
    def mixes(self) -> bool:
        """Whether step() can run chunks and the decode in one pass (the lean eager step)."""
        return self.lean is not None and not self.pieces.compiled

    @torch.inference_mode()
    def step(self, chunks: list[tuple[Sequence, int, int]]) -> list[Sequence]:
        """One forward pass for a whole step (needs `mixes`): prompt chunks (a whole prompt is one
        chunk; each in its staging KV, joining the batch with its last chunk) and one decode
        token for every row already in the batch. Returns the sequences that got a token: the
        decoded rows, then the prompts that joined."""
        if self.fault_hook:
            if chunks:
                self.fault_hook("prefill", [seq for seq, _, _ in chunks])
            if self.rows:
                self.fault_hook("decode", self.rows)
        segments = []
        for seq, start, stop in chunks:  # staging first: it may give the batch's spare memory back
            ids, mask, pos, view = self._staged(seq).inputs(start, stop)
            segments.append(Segment(ids, mask, pos, view.buffers, *view.target()))
        rows = list(self.rows)
        if rows:
            ids, mask, pos, view = self._decode_inputs()
            segments.append(Segment(ids, mask, pos, view.buffers, *view.target()))
        dev = self.device
        for seg in segments:
            seg.ids, seg.mask, seg.pos = seg.ids.to(dev), seg.mask.to(dev), seg.pos.to(dev)
        self.lean_calls += 1
        logits = self.lean.mixed(segments)
        if rows:  # the rows first: joining may move the batch's buffers
            self._decode_done(logits[-1])
        joined, joined_logits = [], []
        for (seq, start, stop), row_logits in zip(chunks, logits):
            self.staging[seq.request_id].commit(start, stop)
            self._count_chunk(start, stop)
            if stop == len(seq.input_ids):
                joined.append(seq)
                joined_logits.append(row_logits)
        if joined:
            self._join(joined)
            self._sample_and_append(joined, torch.cat(joined_logits))
        return rows + joined

    def _staged(self, seq: Sequence) -> Staged:
        staged = self.staging.get(seq.request_id)
        if staged is None:
            # The batch may hold more than its rows' plan (rows left since it was allocated):
            # give that back before the staging KV takes memory the plan gave to it.
            self.kv.fit_rows()
            staged = self.staging[seq.request_id] = Staged.start(seq, self.kv)
        return staged

    def _count_chunk(self, start: int, stop: int) -> None:
        c = self.counters
        c.prefill_calls += 1
        c.prefill_tokens += stop - start
        c.prefill_slots += stop - start

    def _chunk_done(self, seq: Sequence, start: int, stop: int) -> bool:
        """Count a computed chunk; after the last one move the request into the batch. Returns
        whether it joined (its first token is then to be sampled)."""
        self._count_chunk(start, stop)
        if stop < len(seq.input_ids):
            return False
        self._join([seq])
        return True

    def _join(self, seqs: list[Sequence]) -> None:
        """Move fully prefilled requests from their staging KVs into the batch, together: one
        placement of the batch KV (a reallocation at most) however many join."""
        join_all([self.staging.pop(seq.request_id) for seq in seqs], self.kv)
        for seq in seqs:
            self._index[seq.request_id] = len(self.rows)
            self.rows.append(seq)

    def _prefill_group(self, inputs: list[list[int]], first_row: int, width: int) -> torch.Tensor:
        n = len(inputs)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.bool)
        for r, x in enumerate(inputs):
            ids[r, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[r, width - len(x) :] = True
        pos = (mask.long().cumsum(-1) - 1).clamp_(min=0)
        view = self.kv.prefill_view(first_row, n, self.kv.end - width)
        logits = self._forward(ids, mask, pos, view)
        c = self.counters
        c.prefill_calls += 1
        c.prefill_tokens += sum(len(x) for x in inputs)
        c.prefill_slots += n * width
        return logits

    @torch.inference_mode()
    def decode(self) -> None:
        """One token for every row."""
        if not self.rows:
            return
        if self.fault_hook:
            self.fault_hook("decode", self.rows)
        self._decode_done(self._forward(*self._decode_inputs()))

    def _decode_inputs(self):
        """(ids, mask, positions, view) of a decode forward over every row, with room made."""
        kv = self.kv
        kv.reserve_decode(1)
        ids = torch.tensor([[s.output_ids[-1]] for s in self.rows], dtype=torch.long)
        pos = torch.tensor(kv.lengths, dtype=torch.long).unsqueeze(1)
        return ids, kv.decode_mask(1), pos, kv.decode_view()

    def _decode_done(self, logits: torch.Tensor) -> None:
        kv, c = self.kv, self.counters
        c.decode_calls += 1
        c.decode_tokens += kv.n
        c.decode_kv_slots += kv.attended_slots()
        c.decode_kv_tokens += sum(kv.lengths) + kv.n
        kv.advance(1)
        self._sample_and_append(self.rows, logits)

    @torch.inference_mode()
    def canary(self) -> None:
        """A one-token forward outside the batch: can the model run at all (health check)?"""
        if self.fault_hook:
            self.fault_hook("canary", [])
        ids = torch.tensor([[self.pad_id]], dtype=torch.long, device=self.device)
        logits = self.model(input_ids=ids, use_cache=False).logits
        if not bool(torch.isfinite(logits.float()).all()):
            raise RuntimeError("canary forward produced non-finite logits")

    def drop(self, request_ids: list[str]) -> None:
        """Drop these requests' rows now (preempted, cancelled, failed, finished); ids without a
        row (dropped already) are skipped."""
        for rid in request_ids:
            self.remove(rid)

    @torch.inference_mode()
    def remove(self, request_id: str) -> bool:
        """Drop one row (or the staging KV of a request still prefilled in chunks) now. False
        if it had none."""
        staged = self.staging.pop(request_id, None)
        if staged is not None:
            staged.kv.release()
            return True
        row = self._index.pop(request_id, None)
        if row is None:
            return False
        moved = self.kv.remove_row(row)
        if moved is not None:
            self.rows[row] = self.rows[moved]
            self._index[self.rows[row].request_id] = row
        self.rows.pop()
        return True

    def reset(self) -> list[Sequence]:
        """Drop every row (after a fault); returns the sequences that were running."""
        dropped = self.rows + [st.seq for st in self.staging.values()]
        for st in self.staging.values():
            st.kv.release()
        self.rows, self._index, self.staging = [], {}, {}
        self.kv.n = 0
        self.kv.trim()
        return dropped

    # -- internals -------------------------------------------------------------------------
    def _forward(self, ids, mask, pos, view) -> torch.Tensor:
        dev = self.device
        if self.lean is not None:
            self.lean_calls += 1
            return self.lean(ids.to(dev), mask.to(dev), pos.to(dev), view.buffers, *view.target(),
                             pieces=self.pieces, grid=self.grid)
        kwargs = {
            "input_ids": ids.to(dev, non_blocking=True),
            "attention_mask": mask.to(dev, non_blocking=True),
            "position_ids": pos.to(dev, non_blocking=True),
            self._cache_arg: view,
            "use_cache": True,
        }
        if self._keep_arg:
            kwargs[self._keep_arg] = 1
        out = self.model(**kwargs)
        return out.logits[:, -1, :]

    def _sample_and_append(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """Pick and append each row's token. A failure here is that request's own (its sampling
        parameters, its text): it ends that request with an error, never its neighbours."""
        if self.on_logits:
            for s, row in zip(seqs, logits):
                self.on_logits(s, row.float().cpu())
        logits = prepare_logits(logits, [s.banned_ids() for s in seqs])
        greedy = logits.argmax(dim=-1).tolist()
        for i, s in enumerate(seqs):
            try:
                s.append(choose(logits, greedy, i, s.params, s.generator))
            except Exception as exc:  # noqa: BLE001
                log.exception("sampling failed for %s", s.request_id)
                s.fail(f"sampling failed for this request: {type(exc).__name__}: {exc}")
        self.drop([s.request_id for s in seqs if s.finished])
