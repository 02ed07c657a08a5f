import json

import pytest

from bucket_scheduler.runtime.api import EngineConfig
from bucket_scheduler.serving.repository import read_parameters
from bucket_scheduler.serving.settings import (SettingsError, engine_config_from_model_config, engine_config_from_parameters,
                                               engine_config_from_triton_args)


def test_parameters_convert_to_field_types():
    cfg = engine_config_from_parameters({
        "model_dir": "tiny", "policy": "continuous", "threads": "2", "memory_fraction": "0.25",
        "trust_remote_code": "false", "max_queue_tokens": "1_000", "scheduler.max_buckets": "8",
        "scheduler.mode": "fast",
    })
    assert cfg.model_dir == "tiny" and cfg.policy == "continuous" and cfg.threads == 2
    assert cfg.memory_fraction == 0.25 and cfg.trust_remote_code is False and cfg.max_queue_tokens == 1000
    assert cfg.scheduler_options == {"max_buckets": 8, "mode": "fast"}


def test_empty_values_mean_default():
    cfg = engine_config_from_parameters({"model_dir": "", "threads": ""})
    assert cfg.model_dir is None and cfg.threads == EngineConfig().threads


@pytest.mark.parametrize("params, fragment", [({"polcy": "bucket"}, "unknown setting"), ({"threads": "two"}, "expected int"),
                                              ({"trust_remote_code": "perhaps"}, "expected bool")])
def test_bad_settings_are_refused(params, fragment):
    with pytest.raises(SettingsError, match=fragment):
        engine_config_from_parameters(params)


@pytest.mark.parametrize("model", ["bucketserve", "bucketserve_tiny"])
def test_shipped_configs_parse(model, repo_root):
    text = (repo_root / "model_repository" / model / "config.pbtxt").read_text()
    params = read_parameters(text)
    cfg = engine_config_from_model_config({"parameters": {k: {"string_value": v} for k, v in params.items()}})
    assert cfg.policy in ("bucket", "static", "continuous", "uellm")
    assert set(params) <= {f for f in EngineConfig.__dataclass_fields__}


def test_every_setting_is_documented_in_the_readme(repo_root):
    readme = (repo_root / "README.md").read_text()
    missing = [f for f in EngineConfig.__dataclass_fields__ if f != "scheduler_options" and f"| `{f}` |" not in readme]
    assert not missing, f"README settings table lacks {missing}"


def triton_args(kind, device_id, **params):
    config = {"parameters": {k: {"string_value": v} for k, v in params.items()}}
    return {"model_config": json.dumps(config), "model_instance_kind": kind, "model_instance_device_id": device_id,
            "model_name": "m", "model_version": "1"}


@pytest.mark.parametrize("kind, device_id, params, device", [
    ("GPU", "0", {}, "cuda:0"),
    ("GPU", "3", {}, "cuda:3"),  # one instance per GPU: each on its own
    ("GPU", "1", {"device": "cuda"}, "cuda:1"),
    ("GPU", "1", {"device": "cpu"}, "cpu"),  # an explicit setting wins
    ("GPU", "1", {"device": "cuda:0"}, "cuda:0"),
    ("CPU", "0", {}, "auto"),
    ("MODEL", "0", {"device": "cuda"}, "cuda"),
])
def test_instance_device_from_triton_args(kind, device_id, params, device):
    assert engine_config_from_triton_args(triton_args(kind, device_id, **params)).device == device


def test_instance_device_id_must_be_an_integer():
    with pytest.raises(SettingsError, match="device id"):
        engine_config_from_triton_args(triton_args("GPU", "first"))


@pytest.mark.parametrize("model", ["bucketserve", "bucketserve_tiny"])
def test_model_py_builds_its_config_from_the_instance_args(model, repo_root):
    source = (repo_root / "model_repository" / model / "1" / "model.py").read_text()
    assert "engine_config_from_triton_args(args)" in source


@pytest.mark.parametrize("model", ["bucketserve", "bucketserve_tiny"])
def test_shipped_configs_set_only_what_differs_from_the_defaults(model, repo_root):
    """One source of defaults: EngineConfig. A config.pbtxt repeats none of them."""
    params = read_parameters((repo_root / "model_repository" / model / "config.pbtxt").read_text())
    default = EngineConfig()
    for key, raw in params.items():
        assert getattr(engine_config_from_parameters({key: raw}), key) != getattr(default, key), (model, key)


def test_readme_defaults_are_the_engine_defaults(repo_root):
    readme = (repo_root / "README.md").read_text()
    default = EngineConfig()
    for name in EngineConfig.__dataclass_fields__:
        if name == "scheduler_options":
            continue
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}` |"))
        cell = row.split("|")[2].strip().strip("`")
        cell = "" if cell in ("empty", "(empty)") else cell
        parsed = engine_config_from_parameters({name: cell}) if cell else default
        assert getattr(parsed, name) == getattr(default, name), (name, cell)


def test_prefill_budget_and_chunking_are_settings_every_policy_takes():
    from bucket_scheduler.core.factory import make_scheduler
    from bucket_scheduler.core.memory import FixedProbe, KVSpec, MemoryPlanner

    cfg = engine_config_from_parameters({"scheduler.max_num_batched_tokens": "192", "scheduler.chunked_prefill": "true"})
    assert cfg.scheduler_options == {"max_num_batched_tokens": 192, "chunked_prefill": True}
    planner = MemoryPlanner(KVSpec(num_layers=2, num_kv_heads=2, head_dim=8), FixedProbe(1 << 30))
    for policy in ("bucket", "static", "continuous", "uellm"):
        cfg.policy = policy
        sched = make_scheduler(policy, planner, 1024, 8, **cfg.policy_options())
        assert sched.prefill.max_num_batched_tokens == 192 and sched.prefill.chunking


def test_readme_documents_the_engine_prefill_defaults(repo_root):
    """The README rows of the shared prefill options state what the engine runs by default."""
    from bucket_scheduler.runtime.api import RUNTIME_SCHEDULER_DEFAULTS

    readme = (repo_root / "README.md").read_text()
    for option in ("max_num_batched_tokens", "chunked_prefill"):
        row = next(line for line in readme.splitlines() if line.startswith(f"| `scheduler.{option}` |"))
        cell = row.split("|")[2].strip().strip("`")
        assert json.loads(cell) == RUNTIME_SCHEDULER_DEFAULTS["bucket"][option], (option, cell)
