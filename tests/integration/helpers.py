"""Helpers for tests against a real tritonserver: metrics scraping and bounded waits."""

from __future__ import annotations

import os
import re
import time
import urllib.request

_LINE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text -> {(name, frozenset(labels)): value}."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and not line.startswith("#"):
            labels = frozenset(_LABEL.findall(m.group("labels") or ""))
            out[(m.group("name"), labels)] = float(m.group("value"))
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    want = frozenset((k, str(v)) for k, v in labels.items())
    hits = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    assert hits, f"no sample {name}{labels}"
    return sum(hits)


def wait_until(fn, timeout_s: float = 30.0, every_s: float = 0.1):
    """Poll fn() until it returns something truthy; return the last value (falsy on timeout).
    A bounded wait for an asynchronous effect, not a speed check."""
    end = time.monotonic() + timeout_s
    result = fn()
    while not result and time.monotonic() < end:
        time.sleep(every_s)
        result = fn()
    return result


def process_gone(pid: int) -> bool:
    """True once pid has exited (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
