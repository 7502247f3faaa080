# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Both create .venv and install everything on first use; later runs skip installation
# (the stamp is keyed on pyproject.toml's content).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
# On a CUDA machine `make EXTRAS=gpu,dev TORCH=torch ...` installs plain vllm and a CUDA torch.
EXTRAS ?= vllm,dev
TORCH ?= torch==2.13.0

.PHONY: install demo test test-unit test-integration test-gpu bench bench-gpu lint schema clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first, from the local wheel: never let a dependency pull a CUDA build.
	$(PY) -m pip install -q '$(TORCH)'
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	# PyPI's torchvision/torchaudio break `transformers` imports next to the CPU torch.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	@# bubblewrap: the code sandbox; chromium: the report rendering test (Debian packages, root only)
	@if [ "$$(id -u)" = 0 ] && ! { command -v bwrap && command -v chromium; } >/dev/null; then \
	  apt-get update -qq && apt-get install -y -qq bubblewrap chromium >/dev/null; fi
	@rm -f $(VENV)/.installed-*; touch $@

demo: install
	$(VENV)/bin/agentfactory run pipelines/quickstart.yaml

test: install
	$(PY) -m pytest -q --durations=10 tests/unit tests/gpu
	$(PY) -m pytest -q --durations=15 tests/integration

test-unit: install
	$(PY) -m pytest -q tests/unit tests/gpu

test-integration: install
	$(PY) -m pytest -q tests/integration

test-gpu: install
	$(PY) -m pytest -q tests/gpu

bench: install
	@for f in bench/[!_]*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

bench-gpu: install
	PYTHON=$(PY) bash bench/gpu.sh bench/results

lint: install
	$(VENV)/bin/ruff check agentfactory tests bench
	$(VENV)/bin/ruff format --check agentfactory tests bench

schema: install
	$(VENV)/bin/agentfactory domains schema --out tools_repo/schema/domain.schema.json

clean:
	rm -rf $(VENV) .pytest_cache
