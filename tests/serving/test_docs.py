"""What the README says about the code, checked against the code."""

import re

import pytest

from bucket_scheduler.core.factory import make_scheduler
from bucket_scheduler.core.memory import FixedProbe, KVSpec, MemoryPlanner
from bucket_scheduler.runtime.probes import make_probe
from bucket_scheduler.core.request import Request

POLICIES = ["bucket", "static", "continuous", "uellm"]


def readme_row(repo_root, name):
    readme = (repo_root / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith(f"| `{name}`")]
    assert len(rows) == 1, f"README has no single row for {name}"
    return rows[0]


def test_every_memory_probe_kind_is_documented(repo_root):
    with pytest.raises(ValueError) as err:
        make_probe("no-such-probe")
    kinds = [k for k in re.findall(r"(\w+(?::<\w+>)?)", str(err.value).split("use ", 1)[1]) if k != "or"]
    assert {"auto", "file:<path>", "fixed:<bytes>"} <= set(kinds)
    row = readme_row(repo_root, "memory_probe")
    assert [k for k in kinds if f"`{k}`" not in row] == []


def first_admitted(policy):
    planner = MemoryPlanner(KVSpec(num_layers=2, num_kv_heads=2, head_dim=8, dtype_bytes=2), FixedProbe(1 << 30))
    opts = {"max_queue_delay_s": 0.0} if policy == "static" else {}
    s = make_scheduler(policy, planner, 4096, 1, **opts)
    s.add(Request("low", 100, 4, 0.0, priority=0))
    s.add(Request("high", 100, 4, 0.0, priority=5))
    for step in range(5):
        out = s.schedule(0.01 * step)
        if out.prefill:
            return out.prefill[0].request_id
    raise AssertionError(f"{policy} admitted nothing")


def test_readme_says_which_policies_honour_priority(repo_root):
    row = readme_row(repo_root, "priority")
    ignoring = [p for p in POLICIES if first_admitted(p) != "high"]
    assert "bucket" not in ignoring
    if ignoring:
        assert "ignore" in row and all(f"`{p}`" in row for p in ignoring), row


def test_readme_does_not_claim_a_scheduler_uses_slo_tpot(repo_root):
    core = repo_root / "backend" / "bucket_scheduler" / "core"
    used = [p.name for p in core.glob("*.py") if p.name != "request.py" and "slo_tpot" in p.read_text()]
    row = readme_row(repo_root, "slo_ttft_ms")
    assert used or "`slo_tpot_ms` is only measured" in row, row


def test_readme_links_and_named_docs_exist(repo_root):
    readme = (repo_root / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith(("http://", "https://")):
            assert (repo_root / target).exists(), f"README links to missing {target}"
    if "design notes" in readme:
        assert list((repo_root / "docs").glob("design*")), "README names design notes that do not exist"


@pytest.mark.parametrize("model", ["bucketserve", "bucketserve_tiny"])
def test_model_py_agrees_with_the_readme_on_finalize(model, repo_root):
    # README (drain_file) and docs/reliability.md: Triton waits for decoupled requests before finalize()
    assert "waits for decoupled requests before calling `finalize()`" in readme_row(repo_root, "drain_file")
    source = (repo_root / "model_repository" / model / "1" / "model.py").read_text()
    assert "does not wait" not in source and "finalize() only after every decoupled request" in source
