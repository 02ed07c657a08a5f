import pytest

from bucket_scheduler.core.memory import (
    BatchShape,
    FixedProbe,
    KVSpec,
    MemoryPlanner,
    ScriptedProbe,
    make_config_probe,
)


def test_kv_bytes_per_token_llama2_13b():
    kv = KVSpec(num_layers=40, num_kv_heads=40, head_dim=128, dtype_bytes=2)
    assert kv.bytes_per_token == 2 * 40 * 40 * 128 * 2 == 819_200


def test_activation_estimate_grows_with_batch_and_length():
    kv = KVSpec(2, 2, 8, 2, hidden_size=64, intermediate_size=256, vocab_size=1000)
    assert kv.activation_bytes(0, 100) == 0
    one = kv.activation_bytes(1, 100)
    assert one == 100 * 2 * (4 * 64 + 2 * 256) + 1000 * 4
    assert kv.activation_bytes(2, 100) == 2 * one
    assert kv.activation_bytes(1, 200) > one


def test_budget_adds_back_kv_we_hold_for_live_probes_only():
    # A live probe no longer counts what we hold as free: it is added back.
    p = MemoryPlanner(KVSpec(1, 1, 1, 1), ScriptedProbe([1000]), memory_fraction=0.5)
    assert p.budget_bytes() == 500
    assert p.budget_bytes(kv_bytes_in_use=200) == 600
    # fixed: is all the memory there is, our KV included: adding it back would count it twice.
    p = MemoryPlanner(KVSpec(1, 1, 1, 1), FixedProbe(1000), memory_fraction=0.5)
    assert p.budget_bytes(kv_bytes_in_use=200) == p.budget_bytes() == 500


def test_plan_follows_the_runtime_layout():
    """Rows in multiples of row_align, plus one of realloc_tensors tensors for the peak."""
    kv = KVSpec(2, 1, 1, 1, row_align=4, realloc_tensors=4)  # 4 bytes per token
    p = MemoryPlanner(kv, FixedProbe(0))
    assert p.planned_bytes(BatchShape.of([10, 30, 20])) == 4 * 30 * 4 + 4 * 30 * 4 // 4
    assert p.planned_bytes(BatchShape.of([30] * 4)) == p.planned_bytes(BatchShape.of([30] * 3))
    n = p.max_batch_size(tokens_per_seq=100, budget=5 * 400 * 5 // 4)  # room for 5 rows' worth
    assert n == 4  # 5 would allocate 8 rows
    assert p.fits(BatchShape(n, n * 100, 100), 2500) and not p.fits(BatchShape(n + 1, (n + 1) * 100, 100), 2500)


def test_padded_and_per_request_accounting():
    kv = KVSpec(1, 1, 1, 1)  # 2 bytes per token
    shape = BatchShape.of([10, 30, 20])
    assert MemoryPlanner(kv, FixedProbe(0)).planned_bytes(shape) == 3 * 30 * 2
    assert MemoryPlanner(kv, FixedProbe(0), accounting="per_request").planned_bytes(shape) == 60 * 2


def test_max_batch_size_is_largest_fitting_n():
    p = MemoryPlanner(KVSpec(1, 1, 1, 1), FixedProbe(0))
    n = p.max_batch_size(tokens_per_seq=100, budget=1000)  # 200 bytes per sequence
    assert n == 5
    assert p.fits(BatchShape(n, n * 100, 100), 1000)
    assert not p.fits(BatchShape(n + 1, (n + 1) * 100, 100), 1000)


def test_scripted_probe_repeats_last_and_can_be_set():
    p = ScriptedProbe([5, 3])
    assert [p.free_bytes() for _ in range(4)] == [5, 3, 3, 3]
    p.set(9)
    assert p.free_bytes() == 9


def test_config_probe_specs():
    assert make_config_probe("fixed:1234").free_bytes() == 1234
    assert make_config_probe("fixed:8e9").free_bytes() == 8_000_000_000
    assert make_config_probe("FIXED:1_000").free_bytes() == 1000
    assert make_config_probe("auto") is None  # a hardware probe: the runtime's
    with pytest.raises(ValueError, match="fixed:<bytes>"):
        make_config_probe("fixed:lots")


def test_file_probe_reads_each_call_and_fails_closed(tmp_path):
    f = tmp_path / "free"
    f.write_text("2048\n")
    p = make_config_probe(f"file:{f}")
    assert p.free_bytes() == 2048
    f.write_text("1e3")
    assert p.free_bytes() == 1000
    f.unlink()
    assert p.free_bytes() == 0  # unreadable: admit nothing new rather than assume plenty
