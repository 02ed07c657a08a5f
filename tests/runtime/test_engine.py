"""The engine thread: exactly one final per request on every path, streaming text equal
to the non-streamed text, validation and admission errors, cancel and fault handling."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from bucket_scheduler.runtime.api import (
    EngineConfig,
    GenerationRequest,
    InvalidRequest,
    Overloaded,
    SamplingParams,
)
from bucket_scheduler.runtime.admission import MAX_CONSECUTIVE_FAULTS
from bucket_scheduler.runtime.engine import Engine

PROMPTS = [
    "The capital of France is",
    "Bucket batching groups requests",
    "Numbers: 1 2 3",
    "Café über 東京",
    "A scheduler admits requests when memory allows, and a runner executes the batch",
]


def make_engine(**kw) -> Engine:
    cfg = dict(model_dir="tiny", dtype="float32", device="cpu", threads=1, max_model_len=256, max_num_seqs=8)
    cfg.update(kw)
    return Engine(EngineConfig(**cfg))


class Collector:
    """on_output sink: all outputs per request, and an event per final."""

    def __init__(self):
        self.outputs: dict[str, list] = {}
        self.lock = threading.Lock()
        self.finals = queue.Queue()

    def __call__(self, out):
        with self.lock:
            self.outputs.setdefault(out.request_id, []).append(out)
        if out.finished:
            self.finals.put(out.request_id)

    def wait(self, n, timeout=120):
        got = []
        for _ in range(n):
            got.append(self.finals.get(timeout=timeout))
        return got

    def text(self, rid):
        return "".join(o.delta_text for o in self.outputs[rid])

    def final(self, rid):
        finals = [o for o in self.outputs[rid] if o.finished]
        assert len(finals) == 1, f"{rid}: {len(finals)} finals"
        assert self.outputs[rid][-1].finished
        return finals[0]


def req(rid, prompt, max_tokens=16, stream=False, **kw):
    sampling = kw.pop("sampling", None) or SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return GenerationRequest(request_id=rid, prompt=prompt, sampling=sampling, stream=stream, **kw)


@pytest.fixture(scope="module")
def engine():
    eng = make_engine(policy="continuous").start()
    yield eng
    eng.shutdown(timeout_s=5)


def run_all(engine, requests):
    sink = Collector()
    for r in requests:
        engine.submit(r, sink)
    sink.wait(len(requests))
    return sink


def test_stream_equals_non_stream_and_alone(engine):
    alone = {}
    for i, p in enumerate(PROMPTS):
        sink = run_all(engine, [req(f"a{i}", p)])
        alone[i] = sink.final(f"a{i}").delta_text
    batch = [req(f"s{i}", p, stream=True) for i, p in enumerate(PROMPTS)]
    batch += [req(f"n{i}", p, stream=False) for i, p in enumerate(PROMPTS)]
    sink = run_all(engine, batch)
    for i in range(len(PROMPTS)):
        streamed, whole = sink.text(f"s{i}"), sink.final(f"n{i}").delta_text
        assert streamed == whole == alone[i]
        assert len(sink.outputs[f"n{i}"]) == 1  # non-streaming: only the final
        fin = sink.final(f"s{i}")
        assert fin.finish_reason == "length" and fin.num_output_tokens == 16
        assert fin.num_input_tokens > 0
        m = fin.metrics
        assert 0 <= m.queue_s <= m.ttft_s <= m.e2e_s and m.tpot_s > 0


def test_include_input_and_chat_template(engine):
    sink = run_all(engine, [
        req("inc", PROMPTS[0], exclude_input_in_output=False, stream=True),
        req("exc", PROMPTS[0]),
        req("chat", PROMPTS[0], apply_chat_template=True),
    ])
    assert sink.text("inc") == PROMPTS[0] + sink.final("exc").delta_text
    assert sink.final("chat").num_input_tokens > sink.final("exc").num_input_tokens


def test_stop_string_and_eos_and_min_tokens(engine):
    base = run_all(engine, [req("base", PROMPTS[1], max_tokens=24)]).final("base").delta_text
    stop = base[8:11]
    assert stop and base.find(stop) >= 0
    sink = run_all(engine, [req("stop", PROMPTS[1], sampling=SamplingParams(max_tokens=24, ignore_eos=True, stop=[stop]),
                                stream=True)])
    fin = sink.final("stop")
    assert fin.finish_reason == "stop"
    assert sink.text("stop") == base[: base.find(stop)]
    # min_tokens keeps EOS away; without ignore_eos the run still ends by length or EOS.
    sink = run_all(engine, [req("min", PROMPTS[1], sampling=SamplingParams(max_tokens=10, min_tokens=10))])
    assert sink.final("min").num_output_tokens == 10


def test_seeded_sampling_reproduces(engine):
    sp = SamplingParams(max_tokens=12, temperature=0.8, top_k=50, seed=1234, ignore_eos=True)
    a = run_all(engine, [req("x1", PROMPTS[2], sampling=sp)]).final("x1").delta_text
    sink = run_all(engine, [req("x2", PROMPTS[2], sampling=sp), req("y", PROMPTS[3], max_tokens=30)])
    assert sink.final("x2").delta_text == a


def test_invalid_requests(engine):
    bad = [
        req("e1", ""),
        req("e2", "hi", sampling=SamplingParams(max_tokens=0)),
        req("e3", "hi", sampling=SamplingParams(temperature=-1)),
        req("e4", "hi", sampling=SamplingParams(top_p=0.0)),
        req("e5", "hi", sampling=SamplingParams(top_k=-2)),
        req("e6", "hi", sampling=SamplingParams(max_tokens=4, min_tokens=5)),
        req("e7", "hi", sampling=SamplingParams(max_tokens=256)),
        req("e8", "hi", req_class="batch"),
        req("e9", "hi", slo_ttft_ms=-5),
    ]
    for r in bad:
        with pytest.raises(InvalidRequest) as err:
            engine.submit(r, Collector())
        assert str(err.value)
    with pytest.raises(InvalidRequest, match="max_model_len"):
        engine.submit(req("e10", "word " * 300), Collector())


def test_cancel_gives_one_final_and_frees_the_slot(engine):
    sink = Collector()
    engine.submit(req("long", PROMPTS[4], max_tokens=200, stream=True), sink)
    engine.submit(req("short", PROMPTS[0], max_tokens=8), sink)
    deadline = time.monotonic() + 120
    while not sink.outputs.get("long") and time.monotonic() < deadline:
        time.sleep(0.005)
    assert engine.cancel("long")
    sink.wait(2)
    fin = sink.final("long")
    assert fin.finish_reason == "cancelled" and fin.num_output_tokens < 200
    assert sink.final("short").finish_reason == "length"
    assert not engine.cancel("long")  # no longer in flight
    assert "long" not in engine.runner
    assert engine.num_in_flight() == 0


def test_many_cancels_race_exactly_one_final():
    eng = make_engine(policy="bucket").start()
    try:
        sink = Collector()
        n = 24
        for i in range(n):
            eng.submit(req(f"c{i}", PROMPTS[i % len(PROMPTS)] * (1 + i % 3), max_tokens=5 + i, stream=i % 2 == 0), sink)
            if i % 3 == 0:
                eng.cancel(f"c{i}")
        for i in range(1, n, 4):
            eng.cancel(f"c{i}")
        sink.wait(n)
        time.sleep(0.05)  # any stray second final would land now
        for i in range(n):
            fin = sink.final(f"c{i}")
            assert fin.finish_reason in ("length", "cancelled")
            if i % 3 == 0:
                assert fin.finish_reason == "cancelled"
        assert eng.stats().counters.cancelled >= n // 3
    finally:
        eng.shutdown(timeout_s=5)


def test_model_fault_fails_only_that_batch_and_keeps_serving():
    eng = make_engine(policy="continuous").start()
    try:
        calls = {"n": 0}

        def hook(phase, seqs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("injected fault")

        eng.runner.fault_hook = hook
        sink = run_all(eng, [req(f"f{i}", PROMPTS[i], max_tokens=8) for i in range(3)])
        reasons = {sink.final(f"f{i}").finish_reason for i in range(3)}
        assert "error" in reasons
        errs = [sink.final(f"f{i}") for i in range(3) if sink.final(f"f{i}").finish_reason == "error"]
        assert all("injected fault" in e.error_message and e.error_kind == "internal" for e in errs)
        assert eng.healthy
        # Later requests are served normally.
        sink = run_all(eng, [req("after", PROMPTS[0], max_tokens=8)])
        assert sink.final("after").finish_reason == "length"
        # Faults in a row turn the engine unhealthy (and each request still gets its final).
        eng.runner.fault_hook = lambda phase, seqs: (_ for _ in ()).throw(RuntimeError("always"))
        for i in range(MAX_CONSECUTIVE_FAULTS):
            sink = run_all(eng, [req(f"g{i}", PROMPTS[0], max_tokens=4)])
            assert sink.final(f"g{i}").finish_reason == "error"
        assert not eng.healthy
        eng.runner.fault_hook = None
        sink = run_all(eng, [req("ok", PROMPTS[0], max_tokens=4)])
        assert sink.final("ok").finish_reason == "length" and eng.healthy
    finally:
        eng.shutdown(timeout_s=5)


def test_extreme_sampling_values_beside_greedy_all_finish(engine):
    """Valid extremes batched with a greedy request: nobody fails, the engine stays healthy."""
    alone = run_all(engine, [req("alone", PROMPTS[1], max_tokens=8)]).text("alone")
    faults = engine.counters.faults
    extremes = [dict(temperature=1e-40), dict(temperature=5e-324), dict(temperature=100.0, top_k=2**31 - 1),
                dict(temperature=1.0, top_p=1e-45, seed=2**63 - 1), dict(temperature=1e-40, min_tokens=8)]
    reqs = [req(f"x{i}", PROMPTS[i % 4], sampling=SamplingParams(max_tokens=8, ignore_eos=True, **kw))
            for i, kw in enumerate(extremes)]
    sink = run_all(engine, reqs + [req("greedy", PROMPTS[1], max_tokens=8)])
    assert all(sink.final(r.request_id).finish_reason == "length" for r in reqs)
    assert sink.text("greedy") == alone
    assert engine.healthy and engine.counters.faults == faults


def test_a_request_whose_sampling_fails_ends_alone(monkeypatch):
    """A failure in one request's own sampling fails that request only and is no engine fault."""
    import bucket_scheduler.runtime.sampling as sampling_mod

    real = sampling_mod.sample_row

    def flaky(logits, params, generator):
        if params.seed == 13:
            raise RuntimeError("bad row")
        return real(logits, params, generator)

    monkeypatch.setattr(sampling_mod, "sample_row", flaky)
    eng = make_engine(policy="continuous").start()
    try:
        bad = req("bad", PROMPTS[0], sampling=SamplingParams(max_tokens=8, ignore_eos=True, temperature=1.0, seed=13))
        good = [req(f"ok{i}", PROMPTS[i], max_tokens=8) for i in range(3)]
        sink = run_all(eng, [bad, *good])
        assert sink.final("bad").finish_reason == "error" and "bad row" in sink.final("bad").error_message
        assert all(sink.final(f"ok{i}").finish_reason == "length" for i in range(3))
        assert eng.healthy and eng.counters.faults == 0
    finally:
        eng.shutdown(timeout_s=5)


def test_unhealthy_engine_recovers_by_itself_after_a_canary():
    """Faults that are no request's input make the engine unhealthy; while they last the
    canary fails too; once they stop, the engine is healthy again without a restart."""
    eng = make_engine(policy="continuous", fault_backoff_s=0.2).start()
    try:
        broken = {"on": True}

        def hook(phase, seqs):
            if broken["on"]:
                raise RuntimeError(f"device lost ({phase})")

        eng.runner.fault_hook = hook
        for i in range(MAX_CONSECUTIVE_FAULTS):
            assert run_all(eng, [req(f"g{i}", PROMPTS[0], max_tokens=4)]).final(f"g{i}").finish_reason == "error"
        assert not eng.healthy
        time.sleep(1.0)  # several canaries ran, and failed
        assert not eng.healthy and eng.retry_in_s() > 0
        broken["on"] = False
        deadline = time.monotonic() + 10
        while not eng.healthy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert eng.healthy
        assert run_all(eng, [req("ok", PROMPTS[0], max_tokens=4)]).final("ok").finish_reason == "length"
    finally:
        eng.shutdown(timeout_s=5)


def test_overloaded_when_queue_full_and_when_shutting_down():
    eng = make_engine(max_queue_requests=2)  # not started: nothing leaves the queue
    sink = Collector()
    eng.submit(req("q1", "hi"), sink)
    eng.submit(req("q2", "hi"), sink)
    with pytest.raises(Overloaded, match="queue full"):
        eng.submit(req("q3", "hi"), sink)
    with pytest.raises(InvalidRequest, match="already in flight"):
        eng.submit(req("q1", "hi"), sink)
    eng.shutdown(timeout_s=0)
    # The two queued requests got their one final each (error: shut down).
    for rid in ("q1", "q2"):
        fin = sink.final(rid)
        assert fin.finish_reason == "error" and "shut down" in fin.error_message and fin.error_kind == "unavailable"
    with pytest.raises(Overloaded, match="shutting down"):
        eng.submit(req("q4", "hi"), sink)


def test_shutdown_lets_in_flight_finish():
    eng = make_engine().start()
    sink = Collector()
    for i in range(4):
        eng.submit(req(f"d{i}", PROMPTS[i], max_tokens=6), sink)
    eng.shutdown(timeout_s=60)
    for i in range(4):
        assert sink.final(f"d{i}").finish_reason == "length"


def test_scheduler_reject_is_invalid_request():
    eng = make_engine(memory_probe="fixed:1000")  # far too little memory for any request
    with pytest.raises(InvalidRequest, match=r"never be scheduled: .*memory budget 900 bytes"):
        eng.submit(req("big", "hello there"), Collector())
    eng.shutdown(timeout_s=0)


def test_callback_may_call_back_into_the_engine(engine):
    """on_output runs on the engine thread; cancelling from inside it must not deadlock."""
    sink = Collector()

    def on_output(out):
        sink(out)
        if not out.finished:
            engine.cancel(out.request_id)

    engine.submit(req("reentrant", PROMPTS[0], max_tokens=100, stream=True), on_output)
    sink.wait(1)
    assert sink.final("reentrant").finish_reason == "cancelled"


def test_preempted_requests_resume_with_the_same_text():
    """Memory shrinks mid-run: the scheduler preempts, the runner drops those rows, and
    on readmission they are recomputed from prompt + tokens so far. Greedy text must
    equal an undisturbed run."""
    from bucket_scheduler.core.memory import ScriptedProbe

    prompts = [PROMPTS[i % len(PROMPTS)] * (1 + i % 2) for i in range(4)]
    eng = make_engine(policy="continuous").start()
    try:
        reference = run_all(eng, [req(f"ref{i}", p, max_tokens=40) for i, p in enumerate(prompts)])
        # Free memory reads 0 for 15 probe reads (about one per engine step) once the
        # sixth output is out, then comes back.
        state = {"outputs": 0, "squeeze_left": 0}

        def free_bytes():
            if state["squeeze_left"] > 0:
                state["squeeze_left"] -= 1
                return 0
            return 10**10

        eng.planner.probe = ScriptedProbe(free_bytes)
        sink = Collector()

        def on_output(out):
            sink(out)
            state["outputs"] += 1
            if state["outputs"] == 6:
                state["squeeze_left"] = 15

        for i, p in enumerate(prompts):
            eng.submit(req(f"p{i}", p, max_tokens=40, stream=True), on_output)
        sink.wait(len(prompts))
        assert eng.stats().counters.preemptions > 0
        for i in range(len(prompts)):
            assert sink.text(f"p{i}") == reference.final(f"ref{i}").delta_text
            assert sink.final(f"p{i}").num_output_tokens == 40
    finally:
        eng.shutdown(timeout_s=5)


def test_max_model_len_beyond_the_model_is_refused():
    with pytest.raises(ValueError, match="max_position_embeddings"):
        make_engine(max_model_len=10**6)
