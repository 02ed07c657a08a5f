from bucket_scheduler.serving.repository import list_models, prepare_repository, read_parameters, set_parameters


def test_set_parameters_replaces_and_appends():
    text = 'name: "m"\nparameters { key: "policy" value: { string_value: "bucket" } }\n'
    out = set_parameters(text, {"policy": "static", "model_dir": 'a "quoted" dir'})
    assert read_parameters(out) == {"policy": "static", "model_dir": 'a "quoted" dir'}
    assert out.count('key: "policy"') == 1


def test_prepare_repository_copies_chosen_models_with_overrides(tmp_path, repo_root):
    source = repo_root / "model_repository"
    assert {"bucketserve", "bucketserve_tiny"} <= set(list_models(source))
    dest = prepare_repository(source, tmp_path, ["bucketserve_tiny"], {"bucketserve_tiny": {"policy": "static"}}, instance_kind="gpu")
    assert list_models(dest) == ["bucketserve_tiny"]
    model_py = dest / "bucketserve_tiny" / "1" / "model.py"
    assert model_py.is_file() and not model_py.is_symlink()  # the shared model.py becomes a real file
    text = (dest / "bucketserve_tiny" / "config.pbtxt").read_text()
    assert read_parameters(text)["policy"] == "static" and "KIND_GPU" in text and "KIND_CPU" not in text
    # the source stays untouched
    assert read_parameters((source / "bucketserve_tiny" / "config.pbtxt").read_text())["policy"] != "static"


def test_unknown_model_is_refused(tmp_path, repo_root):
    import pytest

    with pytest.raises(ValueError, match="unknown model"):
        prepare_repository(repo_root / "model_repository", tmp_path, ["nope"])
