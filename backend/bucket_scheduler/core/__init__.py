"""Pure scheduling core: requests, buckets, memory planner, policies, scheduler, replay.

Nothing here may import torch or Triton.
"""
