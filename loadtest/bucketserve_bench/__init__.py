"""bucketserve-bench: trace-driven open-loop load against BucketServe (each policy) and vLLM on CPU."""
