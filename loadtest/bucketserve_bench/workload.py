"""Benchmark workloads built from real request-length traces.

A workload is a seeded list of BenchRequest: prompt length and output length drawn from
Azure LLM inference traces (conversation and code services), optionally scaled and clipped
to fit a small machine, a prompt text with exactly that many tokens under the served
model's tokenizer, and a class (online with TTFT / TPOT targets, or offline).  Every
system under test gets the same list, and every request rate the same arrival pattern
stretched to the rate, so runs differ only in the system and the rate.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol, Sequence

from bucket_scheduler.core.stats import percentile
from bucket_scheduler.core.trace import TraceRow, load_trace

# The traces shipped in the repository's data/ folder; the CLI's --trace overrides them.
_DATA = Path(__file__).resolve().parents[2] / "data"
DEFAULT_TRACES = (str(_DATA / "azure_llm_2023_conv.csv"), str(_DATA / "azure_llm_2023_code.csv"))


@dataclass
class LengthShaping:
    """How trace lengths are fitted to this machine: scale, then clip. Stated in every report."""

    prompt_scale: float = 1.0
    output_scale: float = 1.0
    min_prompt: int = 4
    max_prompt: int = 1024
    min_output: int = 2
    max_output: int = 256

    def apply(self, row: TraceRow) -> tuple[int, int]:
        p = round(row.prompt_len * self.prompt_scale)
        o = round(row.output_len * self.output_scale)
        return (min(max(p, self.min_prompt), self.max_prompt), min(max(o, self.min_output), self.max_output))

    def describe(self) -> str:
        return (
            f"prompt tokens x{self.prompt_scale:g} clipped to [{self.min_prompt}, {self.max_prompt}], "
            f"output tokens x{self.output_scale:g} clipped to [{self.min_output}, {self.max_output}]"
        )


@dataclass
class WorkloadSpec:
    traces: Sequence[str] = DEFAULT_TRACES
    num_requests: int = 100
    seed: int = 0
    shaping: LengthShaping = field(default_factory=LengthShaping)
    online_fraction: float = 0.5  # share of requests that carry TTFT / TPOT targets
    # Drawn from the union of the traces, each trace weighted equally (a mixed workload
    # of chat and code requests), rows sampled with replacement.


@dataclass
class BenchRequest:
    index: int
    prompt: str
    prompt_tokens: int
    output_tokens: int
    online: bool
    source: str
    # Filled in once the SLO thresholds are known (online requests only).
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the prompt builder uses."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def get_vocab(self) -> dict[str, int]: ...

    def decode(self, ids: list[int]) -> str: ...


_WORD = re.compile(r"^ [a-z]{3,9}$")
_LOOSE_WORD = re.compile(r"^ [A-Za-z]{1,12}$")  # for toy tokenizers with few whole words


class PromptBuilder:
    """Makes a text of exactly N tokens: N space-led lowercase words, each one token.

    Byte-level BPE pre-splits text at spaces, so a text of words that are each a single
    vocabulary entry (" house") encodes to exactly one token per word.  The pool holds
    only words verified to round-trip alone; build() checks the whole text again.
    """

    def __init__(self, tokenizer: Tokenizer, pool_size: int = 2000):
        self.tokenizer = tokenizer
        words = self._pool(_WORD, pool_size)
        if len(words) < 50:
            words = self._pool(_LOOSE_WORD, pool_size)
        if len(words) < 8:
            raise ValueError("tokenizer has too few single-token words to synthesise prompts")
        self.words = words

    def _pool(self, pattern: re.Pattern, pool_size: int) -> list[str]:
        words = []
        for tok_id in sorted(self.tokenizer.get_vocab().values()):
            text = self.tokenizer.decode([tok_id])
            if pattern.match(text) and self.tokenizer.encode(text, add_special_tokens=False) == [tok_id]:
                words.append(text)
                if len(words) >= pool_size:
                    break
        return words

    def build(self, num_tokens: int, rng: random.Random) -> str:
        text = "".join(rng.choice(self.words) for _ in range(num_tokens))
        got = len(self.tokenizer.encode(text, add_special_tokens=False))
        if got != num_tokens:
            raise AssertionError(f"synthesised prompt has {got} tokens, wanted {num_tokens}")
        return text


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer  # heavy import, only when prompts are built

    return AutoTokenizer.from_pretrained(str(model_dir))


def sample_lengths(spec: WorkloadSpec, rows_by_trace: dict[str, list[TraceRow]]) -> list[tuple[TraceRow, int, int]]:
    """Seeded draw of (row, prompt_tokens, output_tokens), traces weighted equally."""
    rng = random.Random(f"{spec.seed}-lengths")
    names = sorted(rows_by_trace)
    out = []
    for _ in range(spec.num_requests):
        row = rng.choice(rows_by_trace[rng.choice(names)])
        p, o = spec.shaping.apply(row)
        out.append((row, p, o))
    return out


def add_workload_args(p, num_requests: int = 24, online_fraction: float = 0.5) -> None:
    """The workload flags every benchmark takes; their defaults live here only."""
    p.add_argument("--trace", action="append", help="Azure LLM trace CSV (repeat for a mix; default: the conversation and code traces)")
    p.add_argument("--num-requests", type=int, default=num_requests, help=f"requests per run (default {num_requests})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--online-fraction", type=float, default=online_fraction,
                   help=f"share of requests with TTFT/TPOT SLOs (default {online_fraction:g})")
    p.add_argument("--prompt-scale", type=float, default=0.25, help="multiply trace prompt lengths (default 0.25)")
    p.add_argument("--output-scale", type=float, default=0.25, help="multiply trace output lengths (default 0.25)")
    p.add_argument("--min-prompt", type=int, default=4)
    p.add_argument("--max-prompt", type=int, default=512)
    p.add_argument("--min-output", type=int, default=2)
    p.add_argument("--max-output", type=int, default=64)


def workload_spec(args) -> WorkloadSpec:
    """The WorkloadSpec that add_workload_args' flags describe."""
    shaping = LengthShaping(args.prompt_scale, args.output_scale, args.min_prompt, args.max_prompt, args.min_output, args.max_output)
    return WorkloadSpec(traces=args.trace or list(DEFAULT_TRACES), num_requests=args.num_requests, seed=args.seed,
                        shaping=shaping, online_fraction=args.online_fraction)


def build_workload(spec: WorkloadSpec, tokenizer: Tokenizer, trace_rows: dict[str, list[TraceRow]] | None = None,
                   builder: PromptBuilder | None = None) -> list[BenchRequest]:
    """The request list every system gets. Same spec and tokenizer -> same list."""
    if trace_rows is None:
        trace_rows = {str(t): load_trace(t) for t in spec.traces}
    builder = builder or PromptBuilder(tokenizer)
    class_rng = random.Random(f"{spec.seed}-class")
    text_rng = random.Random(f"{spec.seed}-text")
    reqs = []
    for i, (row, p, o) in enumerate(sample_lengths(spec, trace_rows)):
        reqs.append(
            BenchRequest(
                index=i,
                prompt=builder.build(p, text_rng),
                prompt_tokens=p,
                output_tokens=o,
                online=class_rng.random() < spec.online_fraction,
                source=row.source,
            )
        )
    return reqs


def with_fresh_prompts(reqs: list[BenchRequest], builder: PromptBuilder, salt: str) -> list[BenchRequest]:
    """The same requests (lengths, classes, SLOs) with new prompt texts drawn for `salt`.

    Each run of a sweep gets its own texts (the same for every system), so a server with a
    prefix cache (vLLM) cannot reuse prompts it saw in an earlier run."""
    rng = random.Random(f"{salt}-text")
    return [replace(r, prompt=builder.build(r.prompt_tokens, rng)) for r in reqs]


def poisson_offsets(n: int, rate: float, seed: int) -> list[float]:
    """Send times (s from start) of n Poisson arrivals at `rate` req/s.

    The unit-rate gaps are drawn once per seed and divided by the rate, so every rate
    sees the same pattern, only compressed (common random numbers across the sweep).
    """
    if rate <= 0:
        raise ValueError("rate must be > 0")
    rng = random.Random(f"{seed}-arrivals")
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(1.0) / rate
    return out


def apply_slo(reqs: list[BenchRequest], slo_ttft_ms: float, slo_tpot_ms: float) -> None:
    for r in reqs:
        if r.online:
            r.slo_ttft_ms, r.slo_tpot_ms = slo_ttft_ms, slo_tpot_ms
        else:
            r.slo_ttft_ms = r.slo_tpot_ms = None


def summarize(reqs: list[BenchRequest]) -> dict:
    """Length statistics for the report."""

    p = [r.prompt_tokens for r in reqs]
    o = [r.output_tokens for r in reqs]
    return {
        "num_requests": len(reqs),
        "online": sum(r.online for r in reqs),
        "offline": sum(not r.online for r in reqs),
        "prompt_tokens": {"mean": sum(p) / len(p), "p50": percentile(p, 50), "p90": percentile(p, 90), "max": max(p)},
        "output_tokens": {"mean": sum(o) / len(o), "p50": percentile(o, 50), "p90": percentile(o, 90), "max": max(o)},
        "by_source": {s: sum(r.source == s for r in reqs) for s in sorted({r.source for r in reqs})},
    }


def to_dict(r: BenchRequest) -> dict:
    d = asdict(r)
    d.pop("prompt")
    return d
