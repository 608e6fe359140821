# visd-exp: one-command set-up. `make train` and `make test` install first when .venv is missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install train test lint clean help

help:
	@echo "make install   create .venv (FFmpeg libs, torch==2.13.0 first, then the package)"
	@echo "make train     the default run: tiny offline Qwen2.5-VL, synthetic videos, GRPO (ARGS=... for overrides)"
	@echo "make test      the test suite"
	@echo "make lint      ruff"
	@echo "make clean     remove logs/, caches and build outputs (keeps .venv)"

$(VENV)/.installed: pyproject.toml
	@bash scripts/install.sh "$(PYTHON)" "$(VENV)"
	@touch $@

install: $(VENV)/.installed

train: $(VENV)/.installed
	$(PY) -m visd_exp.train $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

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
