import threading
import time

import numpy as np
import pytest

from bucket_scheduler.runtime.api import (ERROR_INTERNAL, ERROR_UNAVAILABLE, FINISH_CANCELLED, FINISH_ERROR, GenerationRequest,
                                          RequestMetrics, RequestOutput, SamplingParams)
from bucket_scheduler.core.interface import BucketInfo, StepStats
from bucket_scheduler.serving.metrics import Metrics
from bucket_scheduler.serving.sender import Sender

from . import fake_pb_utils as pb


class FakeEngine:
    def __init__(self):
        self.cancelled = []

    def cancel(self, request_id):
        self.cancelled.append(request_id)
        return True

    def stats(self):
        step = StepStats(buckets=[BucketInfo(low=0, up=64, depth=2, n_max=4)], budget_bytes=100)
        return {"last_step": step, "num_waiting": 2, "num_running": 1, "kv_bytes": 10, "prefill_padding_efficiency": 0.5}


@pytest.fixture
def setup():
    engine = FakeEngine()
    metrics = Metrics(pb, "m", "1")
    sender = Sender(pb, engine, metrics, cancel_poll_s=0.005, stats_every_s=0.005, stats_fn=engine.stats)
    sender.start()
    yield sender, engine, metrics
    sender.stop()


def request(rid, stream=False, prompt="p", **kw):
    return GenerationRequest(request_id=rid, prompt=prompt, sampling=SamplingParams(max_tokens=4), stream=stream, **kw)


def wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.002)
    return False


def text(resp):
    return resp.outputs["text_output"][0].decode()


def metric(metrics, name, **labels):
    key = (name, tuple(sorted(labels.items())))
    return metrics._metrics[key]


def test_non_streaming_gets_one_response_with_all_text(setup):
    sender, _, metrics = setup
    rs = pb.ResponseSender()
    sender.register(rs, request("a"))
    sender.on_output(RequestOutput("a", delta_text="Hel"))
    sender.on_output(RequestOutput("a", delta_text="lo", finished=True, finish_reason="length", num_input_tokens=3,
                                   num_output_tokens=2, metrics=RequestMetrics(ttft_s=0.01, tpot_s=0.002, e2e_s=0.02)))
    assert wait_for(lambda: rs.finals)
    assert len(rs.sent) == 1
    resp = rs.finals[0]
    assert text(resp) == "Hello" and resp.outputs["finish_reason"][0] == b"length"
    assert resp.outputs["num_output_tokens"][0] == 2 and resp.outputs["num_input_tokens"][0] == 3
    assert wait_for(lambda: metric(metrics, "bucketserve_requests_total", outcome="success").value == 1)
    assert metric(metrics, "bucketserve_generation_tokens_total").value == 2
    assert metric(metrics, "bucketserve_prompt_tokens_total").value == 3
    assert metric(metrics, "bucketserve_time_to_first_token_seconds").observations == [0.01]


def test_streaming_sends_each_delta_then_the_final(setup):
    sender, _, _ = setup
    rs = pb.ResponseSender()
    sender.register(rs, request("s", stream=True))
    for d in ("a", "b"):
        sender.on_output(RequestOutput("s", delta_text=d))
    sender.on_output(RequestOutput("s", delta_text="", finished=True, finish_reason="stop", num_output_tokens=2))
    assert wait_for(lambda: rs.finals)
    # Deltas may share a response when they queue up together; none is lost or reordered.
    assert "".join(text(r) for r, _ in rs.sent) == "ab"
    assert [f for _, f in rs.sent][-1] == pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    assert [f for _, f in rs.sent].count(pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL) == 1


def test_a_stream_that_fell_behind_gets_its_queued_deltas_in_one_response():
    sender = Sender(pb, FakeEngine(), None)
    fast, slow = pb.ResponseSender(), pb.ResponseSender()
    sender.register(fast, request("f", stream=True))
    sender.register(slow, request("s", stream=True))
    # Queued before the thread runs, as when the engine outpaces the sender.
    for d in ("a", "b", "c"):
        sender.on_output(RequestOutput("s", delta_text=d))
    sender.on_output(RequestOutput("f", delta_text="x"))
    sender.on_output(RequestOutput("f", delta_text="y", finished=True, finish_reason="stop", num_output_tokens=2))
    sender.start()
    try:
        assert wait_for(lambda: fast.finals and len(slow.sent) == 1)
        assert [text(r) for r, _ in slow.sent] == ["abc"] and slow.sent[0][1] == 0
        assert [text(r) for r, _ in fast.sent] == ["xy"]  # the queued delta rides with its final
        sender.on_output(RequestOutput("s", delta_text="d"))
        sender.on_output(RequestOutput("s", finished=True, finish_reason="length", num_output_tokens=4))
        assert wait_for(lambda: slow.finals)
        assert "".join(text(r) for r, _ in slow.sent) == "abcd"
    finally:
        sender.stop()


def test_cancel_flows_one_way_and_ends_in_one_cancelled_final(setup):
    sender, engine, metrics = setup
    rs = pb.ResponseSender()
    sender.register(rs, request("c", stream=True))
    sender.on_output(RequestOutput("c", delta_text="x"))
    rs.cancelled = True
    assert wait_for(lambda: engine.cancelled == ["c"])
    time.sleep(0.03)
    assert engine.cancelled == ["c"]  # asked once
    sender.on_output(RequestOutput("c", finished=True, finish_reason=FINISH_CANCELLED, num_output_tokens=1))
    sender.on_output(RequestOutput("c", finished=True, finish_reason="length"))  # a late duplicate is ignored
    assert wait_for(lambda: rs.finals)
    time.sleep(0.03)
    assert len(rs.finals) == 1 and rs.finals[0].error.code() == pb.TritonError.CANCELLED
    assert metric(metrics, "bucketserve_requests_total", outcome="cancelled").value == 1


def test_failures_send_an_error_final(setup):
    sender, _, metrics = setup
    unregistered, registered, faulted = pb.ResponseSender(), pb.ResponseSender(), pb.ResponseSender()
    sender.fail("u", "INVALID_ARG", "max_tokens: bad", "invalid", unregistered)
    sender.register(registered, request("r"))
    sender.fail("r", "UNAVAILABLE", "queue full", "rejected")
    sender.register(faulted, request("f"))
    sender.on_output(RequestOutput("f", finished=True, finish_reason=FINISH_ERROR, error_message="step failed"))
    assert wait_for(lambda: unregistered.finals and registered.finals and faulted.finals)
    assert unregistered.finals[0].error.code() == pb.TritonError.INVALID_ARG
    assert unregistered.finals[0].error.message() == "max_tokens: bad"
    assert registered.finals[0].error.code() == pb.TritonError.UNAVAILABLE
    assert faulted.finals[0].error.code() == pb.TritonError.INTERNAL and "step failed" in faulted.finals[0].error.message()
    for outcome in ("invalid", "rejected", "error"):
        assert metric(metrics, "bucketserve_requests_total", outcome=outcome).value == 1


def test_error_code_follows_the_error_kind_not_the_message(setup):
    """The code comes from the kind the engine set where it made the final: a fault whose
    message mentions a shutdown stays INTERNAL, a drain final stays UNAVAILABLE."""
    sender, _, _ = setup
    internal, drained = pb.ResponseSender(), pb.ResponseSender()
    sender.register(internal, request("i"))
    sender.register(drained, request("d"))
    sender.on_output(RequestOutput("i", finished=True, finish_reason=FINISH_ERROR, error_kind=ERROR_INTERNAL,
                                   error_message="model step failed: RuntimeError: worker shut down unexpectedly"))
    sender.on_output(RequestOutput("d", finished=True, finish_reason=FINISH_ERROR, error_kind=ERROR_UNAVAILABLE,
                                   error_message="request not finished within drain_timeout_s=5"))
    assert wait_for(lambda: internal.finals and drained.finals)
    assert internal.finals[0].error.code() == pb.TritonError.INTERNAL
    assert drained.finals[0].error.code() == pb.TritonError.UNAVAILABLE


def test_in_flight_drops_only_after_the_counters_are_in():
    """A benchmark that waits for zero in flight, then reads the token counters, must see the
    last request's tokens: the gauge goes down after the counters go up."""
    calls = []

    class Recording(Metrics):
        def request_done(self, *args, **kwargs):
            calls.append("request_done")
            super().request_done(*args, **kwargs)

        def set_inflight(self, n):
            calls.append(f"set_inflight({n})")
            super().set_inflight(n)

    sender = Sender(pb, FakeEngine(), Recording(pb, "m", "1"), cancel_poll_s=0.005, stats_every_s=60)
    sender.start()
    try:
        rs = pb.ResponseSender()
        sender.register(rs, request("x"))
        sender.on_output(RequestOutput("x", delta_text="hi", finished=True, finish_reason="length", num_output_tokens=1))
        assert wait_for(lambda: "set_inflight(0)" in calls)
        assert calls.index("request_done") < calls.index("set_inflight(0)")
    finally:
        sender.stop()


def test_stop_answers_everything_pending():
    sender = Sender(pb, FakeEngine(), None)
    sender.start()
    senders = [pb.ResponseSender() for _ in range(5)]
    for i, rs in enumerate(senders):
        sender.register(rs, request(f"p{i}"))
    sender.stop()
    assert all(len(rs.finals) == 1 and rs.finals[0].error.code() == pb.TritonError.UNAVAILABLE for rs in senders)


def test_engine_stats_reach_the_gauges(setup):
    _, _, metrics = setup
    assert wait_for(lambda: ("bucketserve_queue_depth", (("bucket", "[0,64)"),)) in metrics._metrics)
    assert metric(metrics, "bucketserve_queue_depth", bucket="[0,64)").value == 2
    assert metric(metrics, "bucketserve_batch_size").value == 1
    assert metric(metrics, "bucketserve_kv_budget_bytes").value == 100
    assert metric(metrics, "bucketserve_kv_bytes_in_use").value == 10
    assert metric(metrics, "bucketserve_padding_efficiency").value == 0.5


def test_only_the_sender_thread_touches_metrics_and_senders():
    """Many producer threads at once; every send, is_cancelled and metric update still comes
    from one thread (the crash hazard of the python backend's metrics)."""
    engine = FakeEngine()
    metrics = Metrics(pb, "m", "1")
    sender = Sender(pb, engine, metrics, cancel_poll_s=0.001, stats_every_s=0.001, stats_fn=engine.stats)
    sender.start()
    senders = {}

    def producer(k):
        for i in range(50):
            rid = f"{k}-{i}"
            rs = senders[rid] = pb.ResponseSender()
            sender.register(rs, request(rid, stream=True))
            sender.on_output(RequestOutput(rid, delta_text="t"))
            sender.on_output(RequestOutput(rid, finished=True, finish_reason="length", num_output_tokens=1,
                                           metrics=RequestMetrics(ttft_s=0.001, e2e_s=0.002)))

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sender.stop()
    touched = set()
    for rs in senders.values():
        assert len(rs.finals) == 1
        touched |= rs.threads
    for m in metrics._metrics.values():
        touched |= m.threads
    assert len(touched) == 1 and threading.get_ident() not in touched
    assert metric(metrics, "bucketserve_requests_total", outcome="success").value == 400


def test_cancel_checks_cover_a_deep_queue_in_slices():
    engine = FakeEngine()
    sender = Sender(pb, engine, None, cancel_poll_s=0.001, cancel_checks_per_poll=7)
    senders = {f"q{i}": pb.ResponseSender() for i in range(50)}
    for rid, rs in senders.items():
        sender.register(rs, request(rid))
    for rs in list(senders.values())[::5]:
        rs.cancelled = True
    sender.start()
    try:
        assert wait_for(lambda: sorted(engine.cancelled) == sorted(list(senders)[::5]))
    finally:
        sender.stop()


# --- fault injection: a final is never lost ------------------------------------------------


class FinalRaises(pb.ResponseSender):
    """A response sender whose send() of a successful final raises (e.g. a transport error)."""

    def send(self, response=None, flags=0):
        if flags & pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL and response.error is None:
            raise RuntimeError("injected: send of the final failed")
        super().send(response, flags)


class InflightRaises(Metrics):
    def set_inflight(self, n):
        raise RuntimeError("injected: metric update failed")


def test_a_final_that_cannot_be_built_becomes_an_error_final(setup):
    sender, _, metrics = setup
    rs = pb.ResponseSender()
    sender.register(rs, request("bad"))
    # a lone surrogate cannot be encoded as UTF-8: building the response raises
    sender.on_output(RequestOutput("bad", delta_text="\ud800", finished=True, finish_reason="stop", num_output_tokens=1))
    assert wait_for(lambda: rs.finals)
    time.sleep(0.03)
    assert len(rs.sent) == 1 and rs.finals[0].error.code() == pb.TritonError.INTERNAL
    assert "could not build the final response" in rs.finals[0].error.message()
    assert wait_for(lambda: metric(metrics, "bucketserve_requests_total", outcome="error").value == 1)
    assert metric(metrics, "bucketserve_inflight_requests").value == 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_final_whose_send_raises_falls_back_to_an_error_final(setup, stream):
    sender, _, metrics = setup
    rs = FinalRaises()
    sender.register(rs, request("x", stream=stream))
    sender.on_output(RequestOutput("x", delta_text="hi", finished=True, finish_reason="stop", num_output_tokens=1))
    assert wait_for(lambda: rs.finals)
    time.sleep(0.03)
    assert len(rs.finals) == 1 and rs.finals[0].error.code() == pb.TritonError.INTERNAL
    assert wait_for(lambda: metric(metrics, "bucketserve_requests_total", outcome="error").value == 1)
    assert sender.sent_finals == 1


def test_a_failing_metric_does_not_take_the_final_away():
    sender = Sender(pb, FakeEngine(), InflightRaises(pb, "m", "1"))
    sender.start()
    try:
        rs = pb.ResponseSender()
        sender.register(rs, request("m"))
        sender.on_output(RequestOutput("m", delta_text="ok", finished=True, finish_reason="stop", num_output_tokens=1))
        assert wait_for(lambda: rs.finals)
        assert text(rs.finals[0]) == "ok" and rs.finals[0].error is None
    finally:
        sender.stop()
    assert len(rs.finals) == 1
