"""Build a scheduler by policy name; the engine, the Triton model and replay all go through here.

    make_scheduler(policy, planner, max_model_len, max_num_seqs, **options)

policy: "bucket" | "static" | "continuous" | "uellm".  Options are the keyword
arguments of the policy's class (BucketScheduler, StaticScheduler,
ContinuousScheduler, UellmScheduler); an unknown option raises ValueError
naming the accepted ones, so a typo in config.pbtxt fails loudly.
"""

from __future__ import annotations

import inspect

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
    cls = _cls(policy)
    params = list(inspect.signature(cls.__init__).parameters.values())[4:]  # after self, planner, lens
    return {p.name: p.default for p in params}


def _cls(policy: str):
    try:
        return POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown scheduling policy {policy!r}; use one of {sorted(POLICIES)}") from None


def make_scheduler(
    policy: str, planner: MemoryPlanner, max_model_len: int, max_num_seqs: int, **options
) -> Scheduler:
    cls = _cls(policy)
    allowed = policy_options(policy)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for policy {policy!r}; accepted: {sorted(allowed)}"
        )
    return cls(planner, max_model_len, max_num_seqs, **options)
