# One place for every command a person or CI runs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(VENV)/bin
UV ?= $(shell command -v uv 2>/dev/null || echo $(BIN)/uv)
PY_SOURCES := shared services devstack tests scripts infra conftest.py bench
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# A stamp of its own: .venv/bin/python is a link to the interpreter uv found, whose file a
# `touch` through the link would change.
INSTALLED := $(VENV)/.installed

$(INSTALLED): pyproject.toml uv.lock shared/pyproject.toml devstack/pyproject.toml services/*/pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3.11 -m pip install --quiet "uv==0.13.8"
	@# Bytecode now, not in every process that imports MLflow (PYTHONDONTWRITEBYTECODE shells).
	uv sync --frozen --compile-bytecode --python 3.11
	@touch $@

.PHONY: install
install: $(INSTALLED) ## Create .venv and install the locked dependencies

.PHONY: data
data: install ## Make data/iris.csv match its DVC pointer (offline bootstrap)
	$(BIN)/iris-mlops data bootstrap

.PHONY: up
up: install ## Run the whole stack (MLflow, Redis, trainer, predictor, gateway) and wait until ready
	$(BIN)/python -m iris_devstack up

.PHONY: down
down: ## Stop what `make up` started
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m iris_devstack down; fi

.PHONY: status
status: ## Show each service's process and readiness
	$(BIN)/python -m iris_devstack status

.PHONY: logs
logs: ## Follow the stack's logs (.state/logs)
	tail -n 30 -F .state/logs/*.log

.PHONY: train
train: install ## Train, register and gate both models against MLFLOW_TRACKING_URI
	$(BIN)/iris-mlops train

.PHONY: repro
repro: install ## Run the DVC pipeline (validate -> train)
	$(BIN)/dvc repro

# Three pytest-xdist workers on two cores. Each worker has its own session services (MLflow, a
# trained registry, a predictor, a gateway, a Celery worker); with two, the cores idled a fifth
# of the run while both workers waited on processes (start-ups, stops, visibility timeouts),
# and a third worker fills that time for less than it costs. Files run in the order the root
# conftest.py sets (slow files first), not xdist's largest-file-first.
TEST_WORKERS ?= 3
.PHONY: test
test: install ## Run the whole test suite against real processes (installs missing system tools)
	bash scripts/ensure_tools.sh
	$(BIN)/pytest -n $(TEST_WORKERS) --no-loadscope-reorder

.PHONY: test-unit
test-unit: install ## Run the code, data and model tests that start no process (seconds)
	$(BIN)/pytest -m "not integration and not e2e"

.PHONY: lint
lint: install ## Ruff (lint + format check), strict mypy on every package, and the infrastructure checkers
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/mypy
	bash infra/checks/lint_infra.sh

.PHONY: lint-infra
lint-infra: install ## Dockerfiles, compose, workflows, Prometheus rules and Grafana dashboards
	bash infra/checks/lint_infra.sh

.PHONY: format
format: install ## Apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix $(PY_SOURCES)
	$(BIN)/ruff format $(PY_SOURCES)

.PHONY: bench
bench: install ## Benchmark against `mlflow models serve`, MLServer and BentoML (own venvs) with wrk; bench/results.{json,md}, README table
	bash bench/ensure_wrk.sh
	$(BIN)/python -m bench.run

.PHONY: profile
profile: install ## py-spy on one server worker under each bench load: where the time goes; bench/profile.{json,md}
	bash bench/ensure_wrk.sh
	$(BIN)/python -m bench.profile

SOAK_MINUTES ?= 5
.PHONY: soak
soak: install ## Mixed traffic for SOAK_MINUTES (5) while a retrain runs, the alias moves and Redis restarts; bench/soak-results.{json,md}
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES)

# Containers (scripts/images.sh): ENGINE=docker|podman (default docker when its daemon answers,
# else podman), OFFLINE=auto|yes|no (bases built from Debian's packages where no registry
# answers). $(COMPOSE_RUN) ARGS runs compose with the engine, command and files that
# `make images` chose (`bash scripts/images.sh env` prints them).
COMPOSE_RUN := bash scripts/images.sh compose
.PHONY: images
images: ## Build every image of the stack (docker, else podman; Debian-built bases where no registry answers)
	bash scripts/images.sh build

PREDICTORS ?= 1
WORKERS ?= 1
.PHONY: compose-up
compose-up: install images ## The stack in containers (PREDICTORS and WORKERS replicas), the first model trained by its bootstrap
	PREDICTORS=$(PREDICTORS) WORKERS=$(WORKERS) $(BIN)/python scripts/compose_stack.py up

.PHONY: compose-down
compose-down: install ## Stop the containers; the volumes (registry, jobs, prediction logs) stay
	$(BIN)/python scripts/compose_stack.py down

.PHONY: compose-smoke
compose-smoke: install images ## The README's workflow (predict, retrain, promote, feedback) against the containers only (2 predictors, 2 workers), on a project of its own
	$(BIN)/python scripts/compose_stack.py smoke

.PHONY: clean
clean: down ## Remove local state (.state/, reports/) but keep the venv
	rm -rf .state reports
