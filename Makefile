# Everything a fresh machine needs: `make demo` and `make test` create .venv and install.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is pinned to the local CPU wheel: an unpinned torch would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed
# Peer-model tests (torchvision, timm, transformers) need the torch build their compiled ops match,
# so they run in a second environment; torchsmith comes from src/ through PYTHONPATH.
INTEROP      := .venv-interop
IPY          := $(INTEROP)/bin/python
INTEROP_PKGS := torch==2.14.1 torchvision==0.29.1 timm transformers==4.57.6
ISTAMP       := $(INTEROP)/.installed

.PHONY: install interop demo demo-distributed test test-main test-interop sweep faults fuzz bench clean vendor-elk

# the diagram's browser tests drive Debian's Chromium through Playwright (no browser download)
CHROMIUM := /usr/bin/chromium
# the layout engine inlined into diagram pages, vendored from npm (src/torchsmith/inspect/vendor/README.md)
ELK_VERSION ?= 0.12.1
VENDOR      := src/torchsmith/inspect/vendor

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[dev,tour]" "$(TORCH)"
	touch $(STAMP)

install: $(STAMP)

$(ISTAMP): pyproject.toml Makefile
	test -x $(IPY) || $(PYTHON) -m venv $(INTEROP)
	$(IPY) -m pip install --quiet --upgrade pip
	$(IPY) -m pip install --quiet $(INTEROP_PKGS)
	$(IPY) -m pip install --quiet -e ".[dev]" $(INTEROP_PKGS)
	touch $(ISTAMP)

interop: $(ISTAMP)

$(CHROMIUM):
	apt-get update && apt-get install -y chromium

# refresh the vendored elkjs from the npm registry: make vendor-elk ELK_VERSION=x.y.z
vendor-elk:
	rm -rf .elk && mkdir .elk && cd .elk && npm pack --silent elkjs@$(ELK_VERSION) && tar xzf elkjs-$(ELK_VERSION).tgz
	cp .elk/package/lib/elk.bundled.js $(VENDOR)/elk.bundled.js
	cp .elk/package/LICENSE.md $(VENDOR)/ELK-LICENSE.md
	rm -rf .elk

demo: $(STAMP) $(CHROMIUM)
	$(PY) examples/tour.py

# examples/finetune_digits.py in full on 2 processes: DDP, FSDP2, two single-process "nodes"; then convert
DIGITS := examples/finetune_digits.py
TORCHRUN := $(PY) -m torch.distributed.run
demo-distributed: $(STAMP)
	$(TORCHRUN) --standalone --nproc_per_node 2 $(DIGITS) --out runs/ddp
	$(TORCHRUN) --standalone --nproc_per_node 2 $(DIGITS) --out runs/fsdp --strategy fsdp
	port=$$($(PY) -c "import socket; s = socket.socket(); s.bind(('localhost', 0)); print(s.getsockname()[1])"); \
	node="$(TORCHRUN) --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint localhost:$$port --rdzv-id digits-$$port"; \
	$$node $(DIGITS) --out runs/two-nodes & first=$$!; \
	$$node $(DIGITS) --out runs/two-nodes & second=$$!; \
	wait $$first && wait $$second
	$(PY) -m torchsmith convert runs/fsdp/dcp/digits-resnet18 runs/fsdp/digits-consolidated.safetensors
	$(PY) -m torchsmith diff runs/fsdp/digits-consolidated.safetensors runs/fsdp/digits-resnet18/model.safetensors

# both suites: the main one on the pinned CPU torch, then the peer-model suite (tests/interop); each says
# which stage is running, and pytest prints one line per test file as it goes
test: test-main test-interop

test-main: $(STAMP) $(CHROMIUM)
	@echo "== test-main: the main suite on the CPU torch ($(VENV))"
	$(PY) -m pytest

test-interop: $(ISTAMP)
	@echo "== test-interop: peer models (torchvision, timm, transformers) in $(INTEROP)"
	PYTHONPATH=$(CURDIR)/src $(IPY) -m pytest tests/interop

# every operation on every torchvision builder, ~170 timm and ~30 transformers models (an hour or more on 2 cores):
# writes docs/compatibility.md and docs/compatibility.json; resumes from .sweep/ after an interruption.
# SWEEP_ARGS="--sample 20" or "--only 'timm.*'" for a part (written to .sweep/), "--fresh" to start over,
# "--publish" to publish a stopped sweep's finished models (the page says how many of how many)
sweep: $(ISTAMP)
	PYTHONPATH=$(CURDIR)/src:$(CURDIR) $(IPY) -m sweep $(SWEEP_ARGS)

# the reliability suite's long versions (docs/reliability.md): 64 MiB files, 100 kills, every truncation, the long fuzz
faults: $(STAMP)
	TORCHSMITH_LONG=1 $(PY) -m pytest -q tests/reliability

# >= 10,000 hypothesis examples each for safetensors headers, config.json and torch objects
fuzz: $(STAMP)
	TORCHSMITH_LONG=1 $(PY) -m pytest -q tests/reliability/test_reliability_fuzz.py

bench: $(STAMP)
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) $(INTEROP) build dist src/*.egg-info .pytest_cache .hypothesis
