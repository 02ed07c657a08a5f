"""BucketServe: bucket-based dynamic batching for LLM inference.

Rooms (imports run one way: serving -> runtime -> core):
  core/     pure-Python scheduling decisions (no torch, no Triton)
  runtime/  torch runner, model preparation, engine thread
  serving/  launcher and the helpers the Triton model imports
"""

__version__ = "0.1.0"
