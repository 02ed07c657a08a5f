"""Read a Prometheus text endpoint: our server's bucketserve_* metrics around each run."""

from __future__ import annotations

import re
import urllib.request

# name, optional {labels} (quoted values may hold anything but an unescaped quote), value
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)')


_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_IGNORED_LABELS = {"model", "version"}  # one server, one model: these tell samples nothing apart


def parse_metrics(text: str, prefix: str = "bucketserve_") -> dict[str, float]:
    """Sample key -> value.  The key is the name plus its labels other than model/version,
    e.g. 'bucketserve_tokens_total{kind="padding"}'; samples with the same key are summed."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = sorted((k, v) for k, v in _LABEL.findall(m.group(2) or "") if k not in _IGNORED_LABELS)
        key = m.group(1) + ("{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else "")
        out[key] = out.get(key, 0.0) + value
    return out


def scrape(url: str, prefix: str = "bucketserve_", timeout_s: float = 5.0) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return parse_metrics(resp.read().decode(), prefix)


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Counter increase over a run (gauges come out as their change; read them from `after`)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items()}
