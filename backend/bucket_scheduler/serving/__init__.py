"""Serving: the launcher, CLI and the helpers the Triton model imports."""
