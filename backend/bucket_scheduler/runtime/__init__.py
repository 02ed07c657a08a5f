"""Torch runtime: model preparation, runner, detokenizer and the engine thread."""
