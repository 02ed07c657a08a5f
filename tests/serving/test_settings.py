import pytest

from bucket_scheduler.runtime.api import EngineConfig
from bucket_scheduler.serving.repository import read_parameters
from bucket_scheduler.serving.settings import SettingsError, engine_config_from_model_config, engine_config_from_parameters


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
