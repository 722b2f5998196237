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
# A CUDA torch cannot be avoided there: PyPI's torchvision 0.29.1 links torch's CUDA libraries (its _C.so
# needs libtorch_cuda.so), and torch 2.14.1's own import loads 12 nvidia-* libraries. The lock file pins every
# package and is installed with --no-deps, leaving out what the suite never loads: triton (248 MB download,
# 895 MiB installed), nvidia-cusolver (201 MB, 234 MiB), cuda-bindings and the dev tools. Measured (2026-12-02,
# fresh venv, empty pip cache): 55 wheels, 2.55 GB, 4.5 GiB in .venv-interop (4,620 MiB); unpinned, with the dev
# extras, it was about 3.2 GB and 5.9 GiB. The largest: torch 554 MB, nvidia-cudnn 553, nvidia-cublas 423.
INTEROP      := .venv-interop
IPY          := $(INTEROP)/bin/python
INTEROP_LOCK := tests/interop/requirements.txt
ISTAMP       := $(INTEROP)/.installed

.PHONY: install interop demo demo-distributed test test-main test-interop sweep faults fuzz bench clean vendor-elk

# the browser tests (the diagram page, the notebook tables) drive Debian's Chromium through Playwright (no
# browser download). Another Chromium: make test CHROMIUM=/path/to/chromium. Without it the main suite does not
# run: the target stops with what to do (installing it needs root).
CHROMIUM ?= /usr/bin/chromium
# the layout engine inlined into diagram pages, vendored from npm (src/torchsmith/inspect/vendor/README.md)
ELK_VERSION ?= 0.12.1
VENDOR      := src/torchsmith/inspect/vendor

$(STAMP): pyproject.toml Makefile
	@echo "== install: $(VENV) with $(TORCH) (the CPU wheel) and torchsmith's dependencies"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[dev,tour]" "$(TORCH)"
	touch $(STAMP)

install: $(STAMP)

$(ISTAMP): $(INTEROP_LOCK) Makefile
	@echo "== interop: the peer-model environment $(INTEROP) (torch 2.14.1, torchvision, timm, transformers; 2.55 GB of wheels)"
	test -x $(IPY) || $(PYTHON) -m venv $(INTEROP)
	$(IPY) -m pip install --quiet --upgrade pip
	$(IPY) -m pip install --progress-bar on --no-deps -r $(INTEROP_LOCK)
	touch $(ISTAMP)

interop: $(ISTAMP)

$(CHROMIUM):
	@echo "== chromium: $(CHROMIUM) is missing; the browser tests (diagram page, notebook tables) need it: apt-get install chromium (Debian's package, about 480 MB with its libraries)"
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "error: installing Chromium needs root. Run 'sudo apt-get install chromium' (or your system's package), or point to one: make test CHROMIUM=/path/to/chromium" >&2; \
	  exit 1; \
	fi
	apt-get update -qq && apt-get install -y -qq chromium

# refresh the vendored elkjs from the npm registry: make vendor-elk ELK_VERSION=x.y.z
vendor-elk:
	rm -rf .elk && mkdir .elk && cd .elk && npm pack --silent elkjs@$(ELK_VERSION) && tar xzf elkjs-$(ELK_VERSION).tgz
	cp .elk/package/lib/elk.bundled.js $(VENDOR)/elk.bundled.js
	cp .elk/package/LICENSE.md $(VENDOR)/ELK-LICENSE.md
	rm -rf .elk

demo: $(STAMP)
	@echo "== demo: the tour (examples/tour.py), 8 steps"
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
	CHROMIUM=$(CHROMIUM) $(PY) -m pytest

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
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(INTEROP) build dist src/*.egg-info .pytest_cache .hypothesis
