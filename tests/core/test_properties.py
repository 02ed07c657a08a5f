"""Invariants on random sequences of add / schedule / finish / cancel / memory changes (hypothesis)."""

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bucket_scheduler.core.factory import make_scheduler
from bucket_scheduler.core.memory import ScriptedProbe
from bucket_scheduler.core.request import RequestState, TERMINAL_STATES

from .helpers import planner, req

MAX_LEN = 2048
MAX_SEQS = 6
BPT = 128  # bytes per token of the test model (helpers.KV)


class SchedulerMachine(RuleBasedStateMachine):
    policy = "bucket"
    options: dict = {}

    @initialize(free_tokens=st.integers(3000, 40_000))
    def setup(self, free_tokens):
        self.probe = ScriptedProbe([free_tokens * BPT])
        self.sched = make_scheduler(self.policy, planner(probe=self.probe), MAX_LEN, MAX_SEQS, **self.options)
        self.accepted = {}
        self.now = 0.0
        self.n = 0
        self.admitted_count = {}
        self.progress = {}  # request id -> prompt tokens its chunks computed so far

    @rule(prompt=st.integers(1, 1800), new=st.integers(1, 300), online=st.booleans(), priority=st.integers(0, 2))
    def add(self, prompt, new, online, priority):
        r = req(f"r{self.n}", prompt=prompt, new=new, t=self.now, online=online, priority=priority,
                slo_ttft_s=0.5 if online else None)
        self.n += 1
        if self.sched.add(r):
            self.accepted[r.request_id] = r
            assert r.state is RequestState.WAITING
        else:
            assert r.state is RequestState.REJECTED and r.reject_reason
            assert r.max_total_len > MAX_LEN or "memory budget" in r.reject_reason

    @rule(dt=st.floats(0.0, 0.3), tokens=st.integers(0, 3))
    def schedule(self, dt, tokens):
        self.now += dt
        was_running = {r.request_id for r in self.sched.running} if hasattr(self.sched, "running") else set()
        waiting_before = {rid for rid, r in self.accepted.items() if r.state is RequestState.WAITING}
        out = self.sched.schedule(self.now)
        ids = [r.request_id for r in out.running]
        assert len(ids) == len(set(ids)) <= MAX_SEQS
        assert {r.request_id for r in out.prefill} <= set(ids)
        assert all(r.state is RequestState.RUNNING for r in out.running)
        assert all(r.state is RequestState.WAITING for r in out.preempted)
        assert not ({r.request_id for r in out.preempted} & set(ids))
        assert {r.request_id for r in out.preempted} <= was_running
        admitted = [r for r in out.running if r.request_id not in was_running]
        assert {r.request_id for r in admitted} <= waiting_before
        # planned memory never exceeds the budget, also right after it shrank
        assert out.stats.planned_kv_bytes <= out.stats.budget_bytes
        for r in admitted:
            self.admitted_count[r.request_id] = self.admitted_count.get(r.request_id, 0) + 1
        self.check_prefill(out, was_running)
        self.check_policy(out, was_running, waiting_before, admitted)
        for r in out.running:
            if not r.is_prefilling:  # a request still prefilled in chunks gets no token yet
                self.sched.on_tokens(r.request_id, tokens, self.now)

    def check_prefill(self, out, was_running):
        """The token budget holds every step; chunks of a request follow each other and end at its
        prefill's length; the requests joining the batch are those whose last chunk ran."""
        cfg = self.sched.prefill
        total = sum(c.tokens for c in out.chunks)
        if cfg.max_num_batched_tokens is not None:
            assert total <= cfg.max_num_batched_tokens or (len(out.chunks) == 1 and not cfg.chunking)
        preempted = {r.request_id for r in out.preempted}
        self.progress = {k: v for k, v in self.progress.items() if k in was_running and k not in preempted}
        for c in out.chunks:
            rid = c.req.request_id
            assert c.start == self.progress.get(rid, 0) < c.stop <= c.req.seq_len
            self.progress[rid] = c.stop
            if c.last:
                assert c.stop == c.req.seq_len
                del self.progress[rid]
        assert [c.req for c in out.chunks if c.last] == out.prefill
        for r in out.running:  # what is left to prefill is what its chunks have not computed
            assert r.prefill_left == (r.seq_len - self.progress.get(r.request_id, 0) if r.is_prefilling else 0)
        assert set(self.progress) <= {r.request_id for r in out.running if r.is_prefilling}

    def check_policy(self, out, was_running, waiting_before, admitted):
        pass

    @precondition(lambda self: self.sched.num_running > 0)
    @rule(data=st.data())
    def finish(self, data):
        r = data.draw(st.sampled_from(sorted(self.sched.running, key=lambda x: x.request_id)))
        self.sched.finish(r.request_id, self.now)
        assert r.state is RequestState.FINISHED

    @precondition(lambda self: self.accepted)
    @rule(data=st.data())
    def cancel(self, data):
        rid = data.draw(st.sampled_from(sorted(self.accepted)))
        r = self.accepted[rid]
        before = r.state
        self.sched.cancel(rid, self.now)
        assert r.state is (before if before in TERMINAL_STATES else RequestState.CANCELLED)

    @rule(free_tokens=st.integers(0, 40_000))
    def memory_changes(self, free_tokens):
        self.probe.set(free_tokens * BPT)

    @invariant()
    def nothing_lost_or_duplicated(self):
        if not hasattr(self, "sched"):
            return
        live = [r for r in self.accepted.values() if r.state not in TERMINAL_STATES]
        waiting = [r for r in live if r.state is RequestState.WAITING]
        running = [r for r in live if r.state is RequestState.RUNNING]
        assert len(waiting) + len(running) == len(live)
        assert self.sched.num_waiting == len(waiting)
        assert sorted(r.request_id for r in self.sched.running) == sorted(r.request_id for r in running)
        assert self.sched.has_work() == bool(live)


class BucketMachine(SchedulerMachine):
    policy = "bucket"

    def check_policy(self, out, was_running, waiting_before, admitted):
        mgr = self.sched.buckets
        # ranges partition [0, MAX_LEN) without overlap and never exceed the bound
        assert mgr.buckets[0].low == 0 and mgr.buckets[-1].up == MAX_LEN
        assert all(a.up == b.low and a.low < a.up for a, b in zip(mgr.buckets, mgr.buckets[1:]))
        assert len(mgr.buckets) <= mgr.config.max_buckets
        # each waiting request sits in exactly one bucket, the one holding its length
        depth = {id(b): 0 for b in mgr.buckets}
        for r in mgr.requests():
            b = mgr.bucket_for(r.seq_len)
            assert b.holds(r.seq_len)
            depth[id(b)] += 1
        assert [depth[id(b)] for b in mgr.buckets] == [b.count for b in mgr.buckets]
        # online before offline: an offline admission leaves no online request waiting in
        # its bucket, and a fresh batch starts with an online request when one is waiting
        before = [self.accepted[rid] for rid in waiting_before]
        starving = any(self.now - r.arrival_time > self.sched.refill.max_wait_s for r in before)  # the guard may win
        if admitted and not was_running and not starving and any(r.is_online for r in before):
            assert admitted[0].is_online
        if any(not r.is_online for r in admitted):
            b = mgr.bucket_for(admitted[0].seq_len)
            assert b.head_online() is None
        # a running batch comes from one bucket (refills only from it)
        if out.stats.bucket_low is not None and self.options.get("refill_scope", "bucket") == "bucket":
            for r in admitted:  # only an online request about to miss its deadline may come from elsewhere
                assert r.is_online or out.stats.bucket_low <= r.seq_len < out.stats.bucket_up


class Algorithm1Machine(BucketMachine):
    options = {"bucket_mode": "algorithm1", "max_buckets": 6}


class MedianMachine(BucketMachine):
    options = {"bucket_mode": "median", "max_buckets": 6}


class SmallDpMachine(BucketMachine):
    options = {"bucket_mode": "dp", "max_buckets": 4, "dp_refresh": 5, "dp_min_observations": 5}


class StaticMachine(SchedulerMachine):
    policy = "static"
    options = {"max_batch_size": 4, "max_queue_delay_s": 0.2}

    def check_policy(self, out, was_running, waiting_before, admitted):
        if admitted:
            assert not was_running or set(was_running) == {r.request_id for r in out.preempted}


class ContinuousMachine(SchedulerMachine):
    policy = "continuous"


class UellmMachine(SchedulerMachine):
    policy = "uellm"

    def check_policy(self, out, was_running, waiting_before, admitted):
        if admitted:
            assert len(admitted) <= 10
            assert not (was_running - {r.request_id for r in out.preempted})


_settings = settings(max_examples=40, stateful_step_count=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
for _m in (BucketMachine, Algorithm1Machine, MedianMachine, SmallDpMachine, StaticMachine, ContinuousMachine, UellmMachine):
    _m.TestCase.settings = _settings

TestBucket = BucketMachine.TestCase
TestAlgorithm1 = Algorithm1Machine.TestCase
TestMedian = MedianMachine.TestCase
TestSmallDp = SmallDpMachine.TestCase
TestStatic = StaticMachine.TestCase
TestContinuous = ContinuousMachine.TestCase
TestUellm = UellmMachine.TestCase


class AnyScopeMachine(BucketMachine):
    policy = "bucket"
    options = {"refill_scope": "any", "max_buckets": 4, "dp_refresh": 5, "dp_min_observations": 5}


class AutoScopeMachine(BucketMachine):
    policy = "bucket"
    options = {"refill_scope": "auto", "max_buckets": 4, "dp_refresh": 5, "dp_min_observations": 5}


AnyScopeMachine.TestCase.settings = _settings
AutoScopeMachine.TestCase.settings = _settings
TestAnyScope = AnyScopeMachine.TestCase
TestAutoScope = AutoScopeMachine.TestCase


# The per-step prefill token budget (core/prefill.py) under every policy, with and without chunks.
BUDGET = {"max_num_batched_tokens": 700}
CHUNKED = {"max_num_batched_tokens": 500, "chunked_prefill": True}


class BucketChunkedMachine(BucketMachine):
    options = {"bucket_mode": "median", "max_buckets": 6, **CHUNKED}


class WideChunkedMachine(BucketMachine):
    options = {"bucket_mode": "median", "max_buckets": 6, "refill_scope": "wide", **CHUNKED}


class ContinuousBudgetMachine(ContinuousMachine):
    options = BUDGET


class ContinuousChunkedMachine(ContinuousMachine):
    options = CHUNKED


class StaticChunkedMachine(StaticMachine):
    options = {**StaticMachine.options, **CHUNKED}


class UellmBudgetMachine(UellmMachine):
    options = BUDGET


for _m in (BucketChunkedMachine, WideChunkedMachine, ContinuousBudgetMachine, ContinuousChunkedMachine,
           StaticChunkedMachine, UellmBudgetMachine):
    _m.TestCase.settings = _settings
TestBucketChunked = BucketChunkedMachine.TestCase
TestWideChunked = WideChunkedMachine.TestCase
TestContinuousBudget = ContinuousBudgetMachine.TestCase
TestContinuousChunked = ContinuousChunkedMachine.TestCase
TestStaticChunked = StaticChunkedMachine.TestCase
TestUellmBudget = UellmBudgetMachine.TestCase
