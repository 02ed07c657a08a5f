"""Hardware memory probes (host RAM, CUDA, NVML) and `make_probe` for the `memory_probe` setting.

The core keeps the probe protocol and the probes that read a setting (fixed:, file:); these read
the machine. torch / pynvml / psutil are imported when a probe is built, not at import."""

from __future__ import annotations

import os
import sys

from ..core.memory import MemoryProbe, make_config_probe

PROBE_KINDS = "auto, psutil, cuda, nvml, fixed:<bytes> or file:<path>"


class PsutilProbe:
    """Host RAM the OS could hand out now (the runner on a CPU)."""

    name = "psutil"

    def __init__(self, device_index: int = 0):  # host memory: the index does not matter
        import psutil

        self._vm = psutil.virtual_memory

    def free_bytes(self) -> int:
        return int(self._vm().available)


class CudaProbe:
    """torch.cuda.mem_get_info on one device."""

    name = "cuda"

    def __init__(self, device_index: int = 0):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("memory probe 'cuda': no CUDA device is available")
        self._torch = torch
        self.device_index = device_index

    def free_bytes(self) -> int:
        free, _total = self._torch.cuda.mem_get_info(self.device_index)
        return int(free)


def nvml_device_for(device_index: int, visible: str | None) -> tuple[str, int | str]:
    """Which NVML device is CUDA device `device_index` (the index torch and Triton use)?

    CUDA numbers only the devices CUDA_VISIBLE_DEVICES leaves visible, in the order listed;
    NVML numbers every physical device. Returns ("index", physical index) or ("uuid", the
    UUID or its prefix as listed). With the variable unset or empty-listed, the indices agree.
    """
    if visible is None or not visible.strip():
        return ("index", device_index)
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if not 0 <= device_index < len(entries):
        raise ValueError(f"CUDA device {device_index} is not among CUDA_VISIBLE_DEVICES={visible!r}")
    entry = entries[device_index]
    if entry.isdigit():
        return ("index", int(entry))
    return ("uuid", entry)


def device_index_of(device: str | None) -> int:
    """The index of a device string: "cuda:2" -> 2; "cuda", "cpu", "auto", None -> 0."""
    if device and ":" in device:
        head, _, tail = device.partition(":")
        if head == "cuda" and tail.strip().isdigit():
            return int(tail)
        raise ValueError(f"device {device!r}: expected cpu, cuda or cuda:<index>")
    return 0


def _cuda_uuid(device_index: int) -> str | None:
    """NVML-style UUID of a CUDA device, when torch is loaded (the engine has it; the settings
    code does not) and knows it; else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        uuid = str(torch.cuda.get_device_properties(device_index).uuid)
    except Exception:  # noqa: BLE001 - no CUDA, older torch
        return None
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


class NvmlProbe:
    """NVML free memory of the GPU CUDA (torch, Triton) calls `device_index`: found by its UUID
    when torch has it, else through CUDA_VISIBLE_DEVICES (nvml_device_for)."""

    name = "nvml"

    def __init__(self, device_index: int = 0):
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = self._find(pynvml, device_index)
        self.device_index = device_index

    @staticmethod
    def _find(pynvml, device_index: int):
        uuid = _cuda_uuid(device_index)
        if uuid is not None:
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(uuid)
            except Exception:  # noqa: BLE001 - e.g. a MIG slice: use the variable
                pass
        kind, key = nvml_device_for(device_index, os.environ.get("CUDA_VISIBLE_DEVICES"))
        if kind == "index":
            return pynvml.nvmlDeviceGetHandleByIndex(key)
        for i in range(pynvml.nvmlDeviceGetCount()):  # CUDA accepts a UUID prefix; NVML wants it whole
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            if uuid.startswith(key) or uuid.startswith(f"GPU-{key}"):
                return handle
        raise RuntimeError(f"memory probe 'nvml': no GPU with UUID {key!r} (CUDA_VISIBLE_DEVICES)")

    def free_bytes(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).free)


def make_probe(spec: str = "auto", device: str | None = None, device_index: int | None = None) -> MemoryProbe:
    """Build a probe from a config string.

    spec: "auto" | "psutil" | "cuda" | "nvml" | "fixed:<bytes>" | "file:<path>".
    "auto": psutil when device == "cpu"; otherwise NVML if a GPU answers, else psutil.
    The GPU probes watch `device_index`, by default the index in `device` ("cuda:1" -> 1).
    """
    probe = make_config_probe(spec)
    if probe is not None:
        return probe
    if device_index is None:
        device_index = device_index_of(device)
    spec = (spec or "auto").strip().lower()
    if spec == "auto" and device != "cpu":
        try:
            return NvmlProbe(device_index)
        except Exception:  # no pynvml, no driver, no GPU: fall back to host memory
            pass
    kinds = {"auto": PsutilProbe, "psutil": PsutilProbe, "cuda": CudaProbe, "nvml": NvmlProbe}
    if spec not in kinds:
        raise ValueError(f"unknown memory probe {spec!r}; use {PROBE_KINDS}")
    return kinds[spec](device_index)
