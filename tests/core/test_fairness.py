"""Nothing starves under sustained load: aging across buckets and the refill cut-off."""

from bucket_scheduler.core.factory import make_scheduler

from .helpers import planner, req


def sustained(sched, horizon_s, dt=0.01, every_steps=4, short_prompt=100, short_new=4):
    """Feed one short request every `every_steps` steps (the server's capacity at batch size 1)
    and return when the long request 'long' was admitted (None if never)."""
    now, n, admitted_at = 0.0, 0, None
    step = 0
    while now < horizon_s:
        if step % every_steps == 0:
            sched.add(req(f"s{n}", prompt=short_prompt, new=short_new, t=now))
            n += 1
        out = sched.schedule(now)
        if any(r.request_id == "long" for r in out.prefill):
            admitted_at = now
        for r in out.running:
            sched.on_tokens(r.request_id, 1, now)
            if r.num_generated >= r.max_new_tokens:
                sched.finish(r.request_id, now)
        now += dt
        step += 1
    return admitted_at


def make(**opts):
    return make_scheduler("bucket", planner(), 4096, 1, bucket_mode="fixed", boundaries=[1000], **opts)


def test_aging_lets_a_long_job_overtake_a_stream_of_short_ones():
    s = make(aging_tokens_per_s=1000.0, max_wait_s=1e9)
    s.add(req("long", prompt=2000, new=4, t=0.0))
    at = sustained(s, horizon_s=6.0)
    # size gap 1900 tokens at 1000 tokens/s of aging: ~1.9 s, plus one short batch
    assert at is not None and at <= 1.9 + 0.1


def test_without_aging_the_long_job_starves():
    s = make(aging_tokens_per_s=0.0, max_wait_s=1e9)
    s.add(req("long", prompt=2000, new=4, t=0.0))
    assert sustained(s, horizon_s=6.0) is None


def test_refill_stops_when_another_bucket_waits_too_long():
    # batch of 4 kept full by a stream into the same bucket; the long request waits in another
    s = make_scheduler("bucket", planner(), 4096, 4, bucket_mode="fixed", boundaries=[1000],
                       aging_tokens_per_s=0.0, max_wait_s=0.5, refill_padding_target=0.0)
    s.add(req("long", prompt=2000, new=4, t=0.0))
    at = sustained(s, horizon_s=5.0, every_steps=1)
    assert at is not None and at <= 0.5 + 0.1  # refill stops after 0.5 s; the batch drains in 4 steps


def test_online_request_in_another_bucket_stops_offline_refill():
    s = make_scheduler("bucket", planner(), 4096, 4, bucket_mode="fixed", boundaries=[1000],
                       refill_padding_target=0.0, online_rescue=False)
    for i in range(3):
        s.add(req(f"a{i}", prompt=100, new=50))
    s.schedule(0.0)
    s.add(req("on", prompt=2000, new=5, t=0.1, online=True))
    s.add(req("a9", prompt=100, new=50, t=0.1))
    out = s.schedule(0.1)
    assert out.prefill == []  # the offline batch drains instead of refilling


def rescue_case(slo_ttft_s, **opts):
    s = make_scheduler("bucket", planner(), 4096, 4, bucket_mode="fixed", boundaries=[1000], **opts)
    for i in range(3):
        s.add(req(f"a{i}", prompt=100, new=50))
    s.schedule(0.0)
    s.schedule(0.1)  # step time 0.1 s: the batch needs about 50 x 0.1 s to drain
    s.add(req("on", prompt=2000, new=5, t=0.15, online=True, slo_ttft_s=slo_ttft_s))
    return s.schedule(0.2)


def test_online_request_that_would_miss_its_deadline_joins_across_buckets():
    assert [r.request_id for r in rescue_case(1.0).prefill] == ["on"]  # deadline 1.15 < drain ~5.1
    assert rescue_case(30.0).prefill == []  # deadline after the drain: it waits for its bucket's turn
    assert rescue_case(0.1).prefill == []  # deadline 0.25 before the next step: padding would not save it
    assert rescue_case(1.0, online_rescue=False).prefill == []
