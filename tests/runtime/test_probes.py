"""The hardware memory probes and `make_probe` (the memory_probe setting)."""

import sys

import pytest

from bucket_scheduler.runtime import probes
from bucket_scheduler.core.memory import FileProbe, FixedProbe
from bucket_scheduler.runtime.probes import PsutilProbe, make_probe


def test_make_probe_specs():
    assert make_probe("fixed:1234").free_bytes() == 1234
    assert make_probe("fixed:8e9").free_bytes() == 8_000_000_000
    assert isinstance(make_probe("psutil"), PsutilProbe)
    assert make_probe("psutil").free_bytes() > 0
    assert isinstance(make_probe("auto", device="cpu"), PsutilProbe)
    with pytest.raises(ValueError, match="unknown memory probe"):
        make_probe("bogus")
    with pytest.raises(ValueError, match="fixed:<bytes>"):
        make_probe("fixed:lots")
    assert isinstance(make_probe("fixed:1"), FixedProbe)  # delegated to the core
    assert isinstance(make_probe("file:/nonexistent"), FileProbe)


# --- several GPUs: each instance probes its own device -------------------------------------


@pytest.mark.parametrize("index, visible, expected", [
    (0, None, ("index", 0)),
    (3, "", ("index", 3)),
    (0, "2,3", ("index", 2)),
    (1, "2, 3", ("index", 3)),
    (1, "GPU-aaaa,GPU-bbbb-cccc", ("uuid", "GPU-bbbb-cccc")),
])
def test_nvml_device_follows_cuda_visible_devices(index, visible, expected):
    assert probes.nvml_device_for(index, visible) == expected


def test_nvml_device_outside_the_visible_list_is_an_error():
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        probes.nvml_device_for(2, "0,1")


class FakeNvml:
    """Three physical GPUs; records which one a probe asked about."""

    uuids = ["GPU-aaaa-0000", "GPU-bbbb-1111", "GPU-cccc-2222"]
    free = [100, 200, 300]

    def nvmlInit(self):  # noqa: N802 - pynvml's names
        pass

    def nvmlDeviceGetCount(self):  # noqa: N802
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, i):  # noqa: N802
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):  # noqa: N802
        return self.uuids.index(uuid)

    def nvmlDeviceGetUUID(self, handle):  # noqa: N802
        return self.uuids[handle].encode()

    def nvmlDeviceGetMemoryInfo(self, handle):  # noqa: N802
        return type("Info", (), {"free": self.free[handle]})()


@pytest.mark.parametrize("device, visible, free", [
    ("cuda:0", None, 100), ("cuda:1", None, 200), ("cuda", "2", 300), ("cuda:1", "2,0", 100),
    ("cuda:0", "GPU-bbbb", 200), ("cuda:1", "GPU-cccc,bbbb", 200),
])
def test_nvml_probe_reads_the_instance_device(monkeypatch, device, visible, free):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    monkeypatch.setattr(probes, "_cuda_uuid", lambda index: None)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    for spec in ("nvml", "auto"):
        assert make_probe(spec, device=device).free_bytes() == free


def test_nvml_probe_prefers_the_uuid_torch_reports(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    monkeypatch.setattr(probes, "_cuda_uuid", lambda index: FakeNvml.uuids[2 - index])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")  # would say otherwise: the UUID wins
    assert make_probe("nvml", device="cuda:0").free_bytes() == 300


def test_device_index_of_device_strings():
    assert [probes.device_index_of(d) for d in (None, "cpu", "auto", "cuda", "cuda:3")] == [0, 0, 0, 0, 3]
    with pytest.raises(ValueError, match="cuda:<index>"):
        probes.device_index_of("cuda:x")
