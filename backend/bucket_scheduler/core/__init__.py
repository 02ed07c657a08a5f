"""Pure scheduling core: requests, buckets, memory planner, policies, scheduler, replay.

Nothing here may import torch, Triton, pynvml or psutil, not even lazily
(tests/core/test_no_heavy_imports.py): the hardware memory probes live in
runtime/probes.py.

Public API:
    request.py    Request, RequestState, RequestClass            (the scheduler's view of a request)
    interface.py  Scheduler protocol, SchedulerOutput, PrefillChunk, StepStats, BucketInfo
    prefill.py    PrefillConfig: the per-step prefill token budget and chunked prefill (every policy)
    factory.py    make_scheduler(policy, planner, max_model_len, max_num_seqs, **options)
                  policy_options(policy) -> {option: default}; POLICIES
    memory.py     KVSpec, MemoryPlanner, BatchShape, MemoryProbe, FixedProbe, FileProbe,
                  ScriptedProbe, make_config_probe (fixed: / file:)
    scheduler.py  BucketScheduler ("bucket")      buckets.py   BucketManager, Bucket
    static.py     StaticScheduler ("static")      continuous.py ContinuousScheduler ("continuous")
    uellm.py      UellmScheduler ("uellm")        predictor.py  OraclePredictor, HistogramPredictor
    policy.py     OrderPolicy (ordering keys)     clock.py      CostModel, SlotCounter
    replay.py     replay, main                    (python -m bucket_scheduler.replay)
    trace.py      TraceRow, load_trace (the one trace reader)   stats.py  percentile
"""
