"""Build a scheduler by policy name; the engine, the Triton model and replay all go through here.

    make_scheduler(policy, planner, max_model_len, max_num_seqs, **options)

policy: "bucket" | "static" | "continuous" | "uellm".  A policy class names its parts'
config dataclasses in CONFIGS ({constructor argument: dataclass}; every policy also takes
SchedulerBase.SHARED_CONFIGS: the prefill token budget, core/prefill.py); options are the fields of
those dataclasses, given flat (`scheduler.<option>` in the settings) and handed to the part
that owns them. Each default lives in its dataclass. An unknown option raises ValueError
naming the accepted ones, so a typo in config.pbtxt fails loudly.
"""

from __future__ import annotations

import dataclasses

from .continuous import ContinuousScheduler
from .interface import Scheduler
from .memory import MemoryPlanner
from .scheduler import BucketScheduler
from .static import StaticScheduler
from .uellm import UellmScheduler

POLICIES = {
    "bucket": BucketScheduler,
    "static": StaticScheduler,
    "continuous": ContinuousScheduler,
    "uellm": UellmScheduler,
}


def policy_options(policy: str) -> dict[str, object]:
    """Option names of a policy and their defaults."""
    return {f.name: f.default for cfg in _cls(policy).configs().values() for f in dataclasses.fields(cfg)}


def _cls(policy: str):
    try:
        return POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown scheduling policy {policy!r}; use one of {sorted(POLICIES)}") from None


def make_scheduler(
    policy: str, planner: MemoryPlanner, max_model_len: int, max_num_seqs: int, **options
) -> Scheduler:
    cls = _cls(policy)
    unknown = sorted(set(options) - set(policy_options(policy)))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for policy {policy!r}; accepted: {sorted(policy_options(policy))}"
        )
    parts = {
        arg: cfg(**{f.name: options[f.name] for f in dataclasses.fields(cfg) if f.name in options})
        for arg, cfg in cls.configs().items()
    }
    return cls(planner, max_model_len, max_num_seqs, **parts)
