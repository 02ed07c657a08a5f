"""Several Triton replicas behind one OpenAI-compatible ingress on Ray Serve, routed by
prompt-length range (router.py) or by Ray's power-of-two-choices (the baseline)."""
