"""The one reader of request-length traces: CSV with TIMESTAMP, ContextTokens, GeneratedTokens
(the Azure LLM inference traces under data/), for the replay tool, the simulator's validation
and every benchmark."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class TraceRow:
    arrival_s: float  # since the first row read, times time_scale
    prompt_len: int  # ContextTokens
    output_len: int  # GeneratedTokens
    source: str = ""  # the file's stem, e.g. "azure_llm_2023_conv"


def load_trace(path: str | Path, limit: int | None = None, time_scale: float = 1.0, start: int = 0) -> list[TraceRow]:
    """Rows `start` .. `start + limit` of a trace, in arrival order."""
    path = Path(path)
    rows: list[TraceRow] = []
    t0 = None
    with path.open(newline="") as f:
        for i, rec in enumerate(csv.DictReader(f)):
            if i < start:
                continue
            ts = _parse_ts(rec["TIMESTAMP"])
            t0 = ts if t0 is None else t0
            rows.append(TraceRow((ts - t0) * time_scale, int(rec["ContextTokens"]), int(rec["GeneratedTokens"]), path.stem))
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise ValueError(f"{path}: no rows")
    rows.sort(key=lambda r: r.arrival_s)
    return rows


def _parse_ts(s: str) -> float:
    s = s.strip()
    try:
        return float(s)
    except ValueError:
        pass
    day, _, frac = s.partition(".")
    base = datetime.strptime(day, "%Y-%m-%d %H:%M:%S").timestamp()
    return base + (float("0." + frac) if frac else 0.0)
