"""The shape grid and the compiled decode step (compiled_step.py, shape_grid.py).

- Grid padding (dummy rows, wider attention window) does not change the real rows' logits
  or the KV memory held.
- The compiled step gives the eager step's greedy tokens (fp32 logits within 1e-4) and
  really ran: every decode step went through the compiled pieces, nothing fell back.
CI compiles one grid shape of the tiny model (and the engine two); the whole-step graph, the
full grid and dynamic shapes are slow."""

from __future__ import annotations

import logging
import random

import pytest
import torch

from bucket_scheduler.runtime.api import EngineConfig
from bucket_scheduler.runtime.runner import Runner
from bucket_scheduler.runtime.shape_grid import ShapeGrid, batch_sizes
from bucket_scheduler.runtime.validation import validate_config
from bucket_scheduler.serving.settings import engine_config_from_parameters

from .helpers import make_seq, random_prompts

TOL = 1e-4


def test_batch_sizes_double_up_to_the_maximum():
    assert batch_sizes(32) == (1, 2, 4, 8, 16, 32)
    assert batch_sizes(24) == (1, 2, 4, 8, 16, 24)
    assert batch_sizes(1) == (1,)
    grid = ShapeGrid.for_max_rows(24)
    assert [grid.rows_for(n) for n in (1, 2, 3, 5, 16, 17, 24, 30)] == [1, 2, 4, 8, 16, 24, 24, 30]


def test_window_start_rounds_the_width_up_within_the_buffer():
    grid = ShapeGrid((1,), col_step=64)
    assert grid.window_start(start=100, end=130) == 130 - 64
    assert grid.window_start(start=66, end=130) == 66  # 64 columns: already on the step
    assert grid.window_start(start=65, end=130) == 2  # 65 columns -> 128
    assert grid.window_start(start=10, end=40) == 0  # never before column 0
    assert ShapeGrid((1,)).window_start(17, 40) == 17  # col_step 0: unchanged


def run_schedule(model, tok, prompts, max_tokens, runner, seed=0):
    """Admit in groups while others decode, drop one mid-flight; every row's logits, every step."""
    rng = random.Random(seed)
    logits: dict[str, list[torch.Tensor]] = {}
    runner.on_logits = lambda s, row: logits.setdefault(s.request_id, []).append(row)
    seqs = [make_seq(tok, f"r{i}", p, m) for i, (p, m) in enumerate(zip(prompts, max_tokens))]
    pending, kv_bytes = list(seqs), []
    while pending or runner.rows:
        if pending and (not runner.rows or rng.random() < 0.3):
            take, pending = pending[:2], pending[2:]
            runner.prefill(take)
        if len(runner.rows) > 2 and rng.random() < 0.05:
            runner.remove(runner.rows[1].request_id)
        if runner.rows:
            runner.decode()
            kv_bytes.append(runner.kv_bytes())
    return {s.request_id: s.output_ids for s in seqs}, logits, kv_bytes


def assert_same(a, b):
    ids_a, logits_a, _ = a
    ids_b, logits_b, _ = b
    assert ids_a == ids_b
    assert sum(map(len, logits_a.values())) == sum(map(len, logits_b.values())) > 0
    worst = max((x - y).abs().max().item() for rid in logits_a for x, y in zip(logits_a[rid], logits_b[rid]))
    assert worst <= TOL, worst


def schedule(model, n=7, seed=5):
    prompts = random_prompts(model.config.vocab_size, n, seed=seed, lo=1, hi=40)
    return prompts, [random.Random(seed + i).randint(1, 20) for i in range(n)]


def test_grid_padding_does_not_change_real_rows(tiny):
    """Dummy rows and a window padded to 16 columns (eager pieces): same tokens, logits within
    1e-4, and the KV cache holds the same bytes at every step (padding allocates no KV)."""
    model, tok = tiny
    prompts, max_tokens = schedule(model)
    plain = run_schedule(model, tok, prompts, max_tokens, Runner(model, tok, max_prefill_tokens=64))
    padded_runner = Runner(model, tok, max_prefill_tokens=64)
    padded_runner.grid = ShapeGrid((8,), col_step=16)  # every batch of <= 8 rows padded to 8
    padded = run_schedule(model, tok, prompts, max_tokens, padded_runner)
    assert_same(plain, padded)
    assert plain[2] == padded[2]  # KV bytes step by step


def compiled_runner(model, tok, mode, grid):
    runner = Runner(model, tok, max_prefill_tokens=64, compile=mode, max_rows=max(grid.sizes) if grid else 8)
    if grid is not None:
        runner.grid = grid
    runner.warm_up()
    assert runner.pieces.compiled and not runner.pieces.stats.failed
    return runner


def check_compiled(tiny, mode, grid, n):
    model, tok = tiny
    prompts, max_tokens = schedule(model, n=n)
    eager = run_schedule(model, tok, prompts, max_tokens, Runner(model, tok, max_prefill_tokens=64))
    runner = compiled_runner(model, tok, mode, grid)
    compiled = run_schedule(model, tok, prompts, max_tokens, runner)
    assert_same(eager, compiled)
    stats = runner.pieces.stats
    # Every decode step ran the compiled pieces; none fell back to eager.
    assert stats.calls == runner.counters.decode_calls > 0 and not stats.failed
    assert stats.shapes == (len(grid.sizes) if grid else 2) and stats.seconds > 0
    return runner


def test_compiled_step_equals_eager_one_shape(tiny):
    """CI form: one grid shape (every batch padded to 4 rows)."""
    check_compiled(tiny, "inductor", ShapeGrid((4,)), n=5)


@pytest.mark.slow  # ~35 s of compiling on 2 busy cores; CI covers the compiled path through `inductor`
def test_compiled_graph_equals_eager_one_shape(tiny):
    """The whole step as one graph (frozen weights, attention as a custom op), one shape."""
    check_compiled(tiny, "inductor-graph", ShapeGrid((4,), col_step=16), n=5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["inductor", "inductor-graph"])
def test_compiled_step_equals_eager_full_grid(tiny, mode):
    check_compiled(tiny, mode, ShapeGrid.for_max_rows(8), n=9)


@pytest.mark.slow
def test_compiled_step_equals_eager_dynamic(tiny):
    runner = check_compiled(tiny, "inductor-dynamic", None, n=9)
    assert runner.grid is None  # dynamic shapes: no padding


def test_compile_failure_falls_back_to_eager(tiny, caplog, monkeypatch, tmp_path):
    """No working C++ compiler (and nothing cached): the step logs once and keeps serving
    eagerly, with the same tokens."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    model, tok = tiny
    torch._dynamo.reset()  # nothing compiled earlier in this process is reused
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    prompts, max_tokens = schedule(model, n=3)
    eager = run_schedule(model, tok, prompts, max_tokens, Runner(model, tok, max_prefill_tokens=64))
    runner = Runner(model, tok, max_prefill_tokens=64, compile="inductor", max_rows=3)
    runner.grid = ShapeGrid((3,))  # a shape no other test compiles
    with caplog.at_level(logging.WARNING, logger="bucketserve.compile"), \
            inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}):
        runner.warm_up()
        fallback = run_schedule(model, tok, prompts, max_tokens, runner)
    torch._dynamo.reset()
    assert runner.pieces.stats.failed and not runner.pieces.compiled
    assert runner.pieces.stats.calls == 0 and runner.pieces.stats.shapes == 0
    assert len([r for r in caplog.records if "running eager" in r.message]) == 1
    assert_same(eager, fallback)


def test_compile_setting():
    assert EngineConfig().compile == "off"
    assert engine_config_from_parameters({"compile": "inductor"}).compile == "inductor"
    with pytest.raises(ValueError, match="compile must be one of"):
        validate_config(EngineConfig(compile="turbo"))


def test_engine_compiles_its_grid_at_start_and_answers_like_eager():
    """The `compile` setting end to end: the engine compiles every grid shape before it
    serves (max_num_seqs 2: shapes 1 and 2), reports them in its stats, and a request gets
    the tokens the eager engine gives."""
    from .test_engine import Collector, make_engine, req

    texts = {}
    for mode in ("off", "inductor"):
        engine = make_engine(compile=mode, max_num_seqs=2).start()
        try:
            stats = engine.stats()
            sink = Collector()
            for i in range(3):
                engine.submit(req(f"r{i}", f"prompt number {i} " * (i + 1), max_tokens=8), sink)
            sink.wait(3)
            texts[mode] = [sink.text(f"r{i}") for i in range(3)]
            if mode == "off":
                assert stats.compiled_shapes == 0 and engine.runner.grid is None
            else:
                assert stats.compiled_shapes == 2 and stats.compile_seconds > 0, engine.runner.pieces.stats.failed
                assert engine.runner.pieces.stats.calls > 0 and not engine.runner.pieces.stats.failed
        finally:
            engine.shutdown(timeout_s=0)
    assert texts["inductor"] == texts["off"]
