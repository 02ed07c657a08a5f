"""Request building: a GenerationRequest becomes a LiveRequest (the validated request, the
core's view of it, its Sequence), which also turns its progress into RequestOutputs. Tokenizing
runs on the caller's thread with its own tokenizer object: the engine thread detokenizes with
another, so the two never share a Rust tokenizer."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..chat_template import render_chat
from ..core.request import Request, RequestClass
from .api import ERROR_INTERNAL, FINISH_ERROR, EngineConfig, GenerationRequest, InvalidRequest, RequestMetrics, RequestOutput
from .detokenizer import IncrementalDetokenizer
from .sampling import is_greedy, make_generator
from .sequence import Sequence
from .validation import check_length, validate_request

OnOutput = Callable[[RequestOutput], None]


@dataclass(eq=False)
class LiveRequest:
    """A request the engine has accepted and not yet answered with a final."""

    gen: GenerationRequest
    core: Request
    seq: Sequence
    on_output: OnOutput
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    prefix_sent: bool = False
    done: bool = False
    cancel_requested: bool = False

    @property
    def request_id(self) -> str:
        return self.gen.request_id

    def got_token(self, now: float) -> None:
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now

    def delta_output(self) -> RequestOutput | None:
        """A streaming delta, when there is text to send (or the echoed prompt still to send)."""
        delta = self.seq.take_delta()
        if not delta and (self.prefix_sent or self.gen.exclude_input_in_output):
            return None
        return self._output(self._with_prefix(delta))

    def final_output(self, reason: str, now: float, error: str | None, error_kind: str | None = None) -> RequestOutput:
        text = "" if reason == FINISH_ERROR else self.seq.take_delta() if self.gen.stream else self.seq.text
        out = self._output(self._with_prefix(text))
        out.finished, out.finish_reason, out.error_message = True, reason, error
        out.error_kind = (error_kind or ERROR_INTERNAL) if reason == FINISH_ERROR else None
        out.metrics = self._metrics(now)
        return out

    def _output(self, text: str) -> RequestOutput:
        return RequestOutput(request_id=self.request_id, delta_text=text, num_input_tokens=len(self.seq.prompt_ids),
                             num_output_tokens=len(self.seq.output_ids))

    def _with_prefix(self, text: str) -> str:
        if not self.gen.exclude_input_in_output and not self.prefix_sent:
            self.prefix_sent = True
            return self.gen.prompt + text
        return text

    def _metrics(self, now: float) -> RequestMetrics:
        arrival = self.core.arrival_time
        m = RequestMetrics(arrival_time=arrival, e2e_s=now - arrival)
        if self.scheduled_at is not None:
            m.queue_s = self.scheduled_at - arrival
        if self.first_token_at is not None:
            m.ttft_s = self.first_token_at - arrival
            n = len(self.seq.output_ids)
            if n > 1 and self.last_token_at is not None:
                m.tpot_s = (self.last_token_at - self.first_token_at) / (n - 1)
        return m


class RequestBuilder:
    """Validate, tokenize, build. Thread-safe (submit() runs on callers' threads)."""

    def __init__(self, config: EngineConfig, tokenizer, detok_tokenizer, eos_ids: frozenset[int], device: str):
        self.config = config
        self.tokenizer = tokenizer
        self.detok_tokenizer = detok_tokenizer
        self.eos_ids = eos_ids
        self.device = device
        self._tok_lock = threading.Lock()

    def build(self, req: GenerationRequest, on_output: OnOutput) -> LiveRequest:
        """Raises InvalidRequest saying what to fix."""
        req = validate_request(req, self.config)
        params = req.sampling
        prompt_ids = self._tokenize(req)
        check_length(len(prompt_ids), params.max_tokens, self.config)
        seconds = lambda ms: ms / 1000.0 if ms is not None else None  # noqa: E731
        core = Request(req.request_id, len(prompt_ids), params.max_tokens, time.monotonic(),
                       req_class=RequestClass.ONLINE if req.req_class == "online" else RequestClass.OFFLINE,
                       priority=req.priority, slo_ttft_s=seconds(req.slo_ttft_ms), slo_tpot_s=seconds(req.slo_tpot_ms))
        generator = None if is_greedy(params) else make_generator(params.seed, self.device)
        seq = Sequence(req.request_id, prompt_ids, params, self.eos_ids,
                       IncrementalDetokenizer(self.detok_tokenizer, prompt_ids), generator)
        return LiveRequest(gen=req, core=core, seq=seq, on_output=on_output)

    def _tokenize(self, req: GenerationRequest) -> list[int]:
        with self._tok_lock:
            if not req.apply_chat_template:
                return list(self.tokenizer(req.prompt, add_special_tokens=True)["input_ids"])
            if not getattr(self.tokenizer, "chat_template", None):
                raise InvalidRequest("apply_chat_template: this model's tokenizer has no chat template")
            text = render_chat(self.tokenizer, [{"role": "user", "content": req.prompt}])
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def load_tokenizer(path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)


def eos_ids_of(model, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(x) for x in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
