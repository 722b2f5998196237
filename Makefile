# Everything a fresh machine needs: `make demo` and `make test` create .venv and install.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is pinned to the local CPU wheel: an unpinned torch would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install demo test faults fuzz bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[dev]" "$(TORCH)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/tour.py

test: $(STAMP)
	$(PY) -m pytest -q

# the reliability suite's long versions (docs/reliability.md): 64 MiB files, 100 kills, every truncation
faults: $(STAMP)
	TORCHSMITH_LONG=1 $(PY) -m pytest -q tests/test_reliability_crash.py tests/test_reliability_corrupt.py \
		tests/test_reliability_pickles.py tests/test_reliability_concurrency.py

# >= 10,000 hypothesis examples each for safetensors headers and config.json
fuzz: $(STAMP)
	TORCHSMITH_LONG=1 $(PY) -m pytest -q tests/test_reliability_fuzz.py

bench: $(STAMP)
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
