"""config.pbtxt `parameters` -> EngineConfig.

Every EngineConfig field can be set by a parameter of the same name (string values, converted
to the field's type). Parameters named `scheduler.<knob>` go to EngineConfig.scheduler_options
(values parsed as JSON when they parse, else kept as strings). An empty value means "default".
The launcher writes per-run overrides into the run's copy of config.pbtxt.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing

from bucket_scheduler.runtime.api import EngineConfig

SCHEDULER_PREFIX = "scheduler."
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    pass


def _field_types() -> dict[str, typing.Any]:
    hints = typing.get_type_hints(EngineConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(EngineConfig)}


def _convert(name: str, raw: str, tp) -> typing.Any:
    text = raw.strip()
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp):
        if text.lower() in ("", "none", "null"):
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    try:
        if tp is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        if tp is int:
            return int(float(text)) if "e" in text.lower() else int(text.replace("_", ""))
        if tp is float:
            return float(text)
        if tp is dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
        return text
    except ValueError:
        raise SettingsError(f"setting {name}={raw!r}: expected {getattr(tp, '__name__', tp)}") from None


def parameters_from_model_config(model_config: dict) -> dict[str, str]:
    """The {key: string_value} map of a parsed model config (args['model_config'])."""
    out = {}
    for key, value in (model_config.get("parameters") or {}).items():
        out[key] = value.get("string_value", "") if isinstance(value, dict) else str(value)
    return out


def engine_config_from_parameters(params: dict[str, str], base: EngineConfig | None = None) -> EngineConfig:
    """Build an EngineConfig; unknown keys are an error (a typo must not go unnoticed)."""
    cfg = dataclasses.replace(base) if base is not None else EngineConfig()
    types = _field_types()
    scheduler_options = dict(cfg.scheduler_options)
    unknown = []
    for key, raw in params.items():
        if key.startswith(SCHEDULER_PREFIX):
            knob = key[len(SCHEDULER_PREFIX):]
            try:
                scheduler_options[knob] = json.loads(raw)
            except ValueError:
                scheduler_options[knob] = raw
            continue
        if key not in types:
            unknown.append(key)
            continue
        if raw.strip() == "" and key != "model_dir":
            continue  # empty: keep the default
        setattr(cfg, key, _convert(key, raw, types[key]))
    if unknown:
        raise SettingsError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(types)} and scheduler.<option>")
    cfg.scheduler_options = scheduler_options
    return cfg


def engine_config_from_model_config(model_config: dict) -> EngineConfig:
    return engine_config_from_parameters(parameters_from_model_config(model_config))


def place_on_instance_device(cfg: EngineConfig, instance_kind: str | None, device_id: str | int | None) -> EngineConfig:
    """A KIND_GPU instance runs on the GPU Triton gave it.

    With KIND_GPU and no `gpus:` list Triton makes one instance per visible GPU and passes each
    its `model_instance_device_id`: the index among the devices CUDA_VISIBLE_DEVICES leaves
    visible, which is also torch's index, so `device` auto/cuda becomes `cuda:<id>`. An explicit
    `cpu` or `cuda:<n>` setting wins; KIND_CPU / KIND_MODEL instances are left as configured.
    """
    if (instance_kind or "").strip().upper() != "GPU" or cfg.device not in ("auto", "cuda"):
        return cfg
    try:
        index = int(str(device_id).strip())
    except ValueError:
        raise SettingsError(f"KIND_GPU instance with device id {device_id!r}: expected an integer") from None
    return dataclasses.replace(cfg, device=f"cuda:{index}")


def engine_config_from_triton_args(args: dict) -> EngineConfig:
    """EngineConfig for one model instance, from the `args` Triton passes to initialize()."""
    cfg = engine_config_from_model_config(json.loads(args["model_config"]))
    return place_on_instance_device(cfg, args.get("model_instance_kind"), args.get("model_instance_device_id", 0))
