"""Pure scheduling core: requests, buckets, memory planner, policies, scheduler, replay.

Nothing here may import torch or Triton (the cuda / nvml memory probes import
torch / pynvml lazily, only when built).

Public API:
    request.py    Request, RequestState, RequestClass            (the scheduler's view of a request)
    interface.py  Scheduler protocol, SchedulerOutput, StepStats, BucketInfo
    factory.py    make_scheduler(policy, planner, max_model_len, max_num_seqs, **options)
                  policy_options(policy) -> {option: default}; POLICIES
    memory.py     KVSpec, MemoryPlanner, BatchShape, make_probe, FixedProbe, ScriptedProbe,
                  PsutilProbe, CudaProbe, NvmlProbe, FileProbe
    scheduler.py  BucketScheduler ("bucket")      buckets.py   BucketManager, Bucket
    static.py     StaticScheduler ("static")      continuous.py ContinuousScheduler ("continuous")
    uellm.py      UellmScheduler ("uellm")        predictor.py  OraclePredictor, HistogramPredictor
    policy.py     OrderPolicy (ordering keys)     clock.py      CostModel, SlotCounter
    replay.py     load_trace, replay, main        (python -m bucket_scheduler.replay)
"""
