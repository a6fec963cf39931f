# ai-backend-unified: developer and CI entry points.
#   make install   venv + editable install with the test and llamacpp extras (skipped while pyproject.toml is unchanged)
#   make sysdeps   apt-get install the Debian packages in APT_PACKAGES that are missing
#   make test      the whole suite with coverage (>= 90 %); "no tests collected" is a failure
#   make lint      ruff check, ruff format --check, mypy
#   make run       the gateway on :4000

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
EXTRAS := test,llamacpp,ui,bench
# Debian packages the tests and services need; each is checked with dpkg -s and installed only if missing.
APT_PACKAGES ?= prometheus wrk chromium systemd tinyproxy redis-server haproxy nginx

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

.PHONY: venv install sysdeps test run lint demo bench monitoring profile generate litellm

venv: $(PY)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

install: $(STAMP)

# llama-cpp-python compiles from source the first time (~8-10 min on 2 cores); pip caches the built
# wheel, so reinstalls take seconds.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[$(EXTRAS)]'
	touch $@

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

test: install sysdeps litellm
	@rc=0; $(PY) -m pytest --cov --cov-report=term-missing --cov-fail-under=90 tests/ || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

run: install
	$(VENV)/bin/aib serve

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy

demo: install
	$(VENV)/bin/aib demo

bench: install
	$(VENV)/bin/aib bench

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
