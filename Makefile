# LLM Engineer Roadmap: one Makefile for learners, instructors and CI.
#   make demo     set everything up, then run the capstones end to end
#   make test     set everything up, then run every stage's suite
# `make help` lists the rest.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# torch's CPU build (2.13.0+cpu) is not on PyPI itself. On a machine whose pip is not already
# configured to find it, point pip at PyTorch's CPU wheel index:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PIP_TORCH := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

# The install is keyed on the lock and the project file: change either and `setup` reinstalls;
# change neither and it only checks that the models are cached (a second or two).
LOCK_HASH := $(shell cat requirements/lock.txt pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(LOCK_HASH)

.PHONY: help setup models demo test stage1 stage2 stage3 stage4 stage5 bench lint format doctor phoenix phoenix-venv exercise grade progress figures \
        lock clean clean-venv reset-cache

help:
	@echo "make setup     venv + locked install + model cache (idempotent)"
	@echo "make demo      run the capstones end to end on the default model"
	@echo "make test      run every stage's suite (what CI runs)"
	@echo "make stageN    run one stage's suite (N = 1..5)"
	@echo "make bench     run the benchmarks; JSON + plots under reports/"
	@echo "make exercise STAGE=N   a workspace with the stage's core mechanisms to fill in"
	@echo "make grade STAGE=N      grade that workspace with the stage's tests: a rubric and a score"
	@echo "make progress  tests passed and exercises done per stage, and the next command"
	@echo "make figures   rewrite the README's measured figures from reports/*.json"
	@echo "make doctor    check the environment and say what to fix"
	@echo "make phoenix   Arize Phoenix (its own venv) on 127.0.0.1:6006, to browse stage 5's traces"
	@echo "make lint      ruff check + format check"
	@echo "make lock      re-resolve requirements/base.in into requirements/lock.txt"
	@echo "make clean     remove reports/, artifacts/ and Python caches (keeps venv and models)"
	@echo "make reset-cache   remove the model and index cache (\$$LLM_ROADMAP_HOME)"
	@echo "make clean-venv    remove the virtual environment"

setup: $(STAMP) models

$(STAMP): requirements/lock.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps $(PIP_TORCH) -r requirements/lock.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

models: $(STAMP)
	@$(PY) -m shared.models fetch --quiet

demo: setup
	@echo "== shared: one question to the default model through shared.chat" >&2
	$(PY) -m shared.chat --stream "What is the capital of France?"
	@echo "== stage 1: the hand-written decode loop, streaming, with a KV cache" >&2
	$(PY) -m stage1_foundations generate --chat --stream --max-new-tokens 60 "Write a haiku about the sea."
	@echo "== stage 2: a question that needs a tool, answered through the tool loop" >&2
	$(PY) -m stage2_prompting_tools ask "I had 1250 stickers and gave away 387. How many are left?"
	@echo "== stage 3: the self-reflective RAG over the Python docs (builds the index once)" >&2
	$(PY) -m stage3_retrieval index
	$(PY) -m stage3_retrieval ask "How do I pick the few smallest items of a big list efficiently?"
	@echo "== stage 4: curate preference pairs, the default DPO run (about 5 min), base and tuned replies served by stage 5's vLLM" >&2
	$(PY) -m stage4_finetune_align curate stage4_finetune_align/data/noisy_pairs.jsonl artifacts/stage4/demo_clean.jsonl
	$(PY) -m stage4_finetune_align train --out artifacts/stage4/demo
	$(PY) -m stage4_finetune_align demo --adapter artifacts/stage4/demo/adapter --merged artifacts/stage4/demo/merged
	@echo "== stage 5: vLLM serving 1 and 8 users; cost, one trace, stage 3 answering through it, Ragas; then it stops" >&2
	$(PY) -m stage5_serving_ops demo

# The suite includes the Phoenix round trip, so CI installs Phoenix's venv too.
test: setup phoenix-venv
	$(PY) -m pytest $(PYTEST_ARGS)

stage1 stage2 stage3 stage4 stage5: setup
	$(PY) -m pytest tests/$@ $(PYTEST_ARGS)

# Each stage's benchmark writes reports/stageN_*.json and a PNG plot beside it.
bench: setup
	$(PY) -m stage1_foundations bench
	$(PY) -m stage1_foundations parity
	$(PY) -m stage1_foundations train-bpe
	$(PY) -m stage2_prompting_tools bench --serve
	$(PY) -m stage3_retrieval bench
	$(PY) -m stage4_finetune_align bench
	$(PY) -m stage5_serving_ops bench --settings default,all-cores,all-cores+batch
	$(PY) -m stage5_serving_ops race
	$(PY) -m stage5_serving_ops dtypes
	$(PY) -m stage5_serving_ops quantize
	$(PY) -m stage5_serving_ops calibrate
	$(PY) -m stage5_serving_ops regressions
	$(PY) -m shared.figures

figures: setup
	@$(PY) -m shared.figures

# Arize Phoenix, in its own venv (its fastapi pin conflicts with vLLM's), pinned by its own lock;
# `make phoenix` serves it on 127.0.0.1:6006. Then:
#   python -m stage5_serving_ops demo --otlp http://127.0.0.1:6006/v1/traces
PHOENIX_VENV ?= .venv-phoenix
PHOENIX_STAMP := $(PHOENIX_VENV)/.installed-$(shell sha256sum requirements/phoenix-lock.txt | cut -c1-16)
phoenix-venv: $(PHOENIX_STAMP)
$(PHOENIX_STAMP): requirements/phoenix-lock.txt
	@test -x $(PHOENIX_VENV)/bin/python || $(PYTHON) -m venv $(PHOENIX_VENV)
	$(PHOENIX_VENV)/bin/pip install --quiet --no-deps -r requirements/phoenix-lock.txt
	@rm -f $(PHOENIX_VENV)/.installed-*
	@touch $@

phoenix: phoenix-venv
	PHOENIX_HOST=127.0.0.1 $(PHOENIX_VENV)/bin/phoenix serve

# Exercise mode: a learner workspace with the core mechanisms cut out, graded by the stage's tests.
#   make exercise STAGE=1 [FORCE=1]    make grade STAGE=1 [FAST=1]
STAGE ?= 1
exercise: setup
	@$(PY) -m shared.exercises make $(STAGE) $(if $(FORCE),--force,)

grade: setup
	@$(PY) -m shared.exercises grade $(STAGE) $(if $(FAST),--fast,)

progress: setup
	@$(PY) -m shared.progress

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Runs with the venv's Python when there is one, else the system's: the doctor's job is to say
# what is missing, including the venv itself.
doctor:
	@$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m shared.doctor

# Re-resolve the whole dependency set once and pin it. Torch comes from pip's configured
# find-links here, or from TORCH_INDEX elsewhere.
PIP_FIND_LINKS := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
lock: $(STAMP)
	$(VENV)/bin/uv pip compile requirements/base.in --override requirements/overrides.txt \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 --index-strategy unsafe-best-match \
	  $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),) $(PIP_TORCH) \
	  --no-header -o requirements/lock.txt
	@echo "requirements/lock.txt updated; run make test before committing it" >&2

clean:
	rm -rf reports artifacts .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

clean-venv:
	rm -rf $(VENV) $(PHOENIX_VENV)

reset-cache:
	rm -rf "$${LLM_ROADMAP_HOME:-$$HOME/.cache/llm-roadmap}"
