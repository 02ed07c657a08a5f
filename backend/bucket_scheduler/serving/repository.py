"""Prepare the model repository a server run uses.

The launcher copies the chosen models from the source repository into a run directory and
writes per-run setting overrides into the copies' config.pbtxt `parameters`. The server then
runs with Triton's default model-control mode ("none"): the models present at start are the
models served, and the model-control API (load/unload over HTTP/gRPC) stays off.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_PARAM_RE = r'parameters\s*:?\s*\{\s*key\s*:\s*"{key}"\s*value\s*:?\s*\{\s*string_value\s*:\s*"(?P<value>(?:[^"\\]|\\.)*)"\s*\}\s*\}'


def default_repository() -> Path | None:
    """The repository next to the source tree (editable installs), else ./model_repository."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "model_repository", Path.cwd() / "model_repository"):
        if (candidate / "bucketserve" / "config.pbtxt").is_file():
            return candidate
    return None


def list_models(repo: Path) -> list[str]:
    return sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def read_parameters(config_text: str) -> dict[str, str]:
    pattern = _PARAM_RE.replace("{key}", r'(?P<key>[^"]+)')
    return {m.group("key"): m.group("value").replace('\\"', '"').replace("\\\\", "\\") for m in re.finditer(pattern, config_text)}


def set_parameters(config_text: str, params: dict[str, str]) -> str:
    """Replace (or append) string parameters in a config.pbtxt text."""
    for key, value in params.items():
        block = f'parameters {{ key: "{key}" value: {{ string_value: "{_quote(str(value))}" }} }}'
        pattern = re.compile(_PARAM_RE.replace("{key}", re.escape(key)))
        if pattern.search(config_text):
            config_text = pattern.sub(lambda _m: block, config_text, count=1)
        else:
            config_text = config_text.rstrip("\n") + "\n" + block + "\n"
    return config_text


def set_instance_kind(config_text: str, kind: str) -> str:
    return re.sub(r"KIND_(CPU|GPU|AUTO|MODEL)", f"KIND_{kind.upper()}", config_text)


def prepare_repository(
    source: Path,
    run_dir: Path,
    models: list[str],
    overrides: dict[str, dict[str, str]] | None = None,
    instance_kind: str | None = None,
) -> Path:
    """Copy `models` from `source` into run_dir/model_repository with overrides applied."""
    available = list_models(source)
    missing = [m for m in models if m not in available]
    if missing:
        raise ValueError(f"unknown model(s) {missing} in {source}; available: {available}")
    dest = run_dir / "model_repository"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in models:
        # symlinks=False: a model that shares another's model.py through a link gets a real file.
        shutil.copytree(source / name, dest / name, symlinks=False, ignore=shutil.ignore_patterns("__pycache__"))
        cfg = dest / name / "config.pbtxt"
        text = cfg.read_text()
        params = (overrides or {}).get(name) or {}
        if params:
            text = set_parameters(text, {k: str(v) for k, v in params.items()})
        if instance_kind:
            text = set_instance_kind(text, instance_kind)
        cfg.write_text(text)
    return dest
