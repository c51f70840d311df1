.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV := .venv/bin
PORT ?= 8080
# SAM CLI lives in a venv of its own (it pins boto3/pydantic); CI points SAM_VENV at a cache.
SAM_VENV ?= .tools/sam
SAM_CLI_VERSION ?= 1.170.0
SAM := SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam
ENV ?= default
# make eval: the LoCoMo benchmark's JSON, downloaded separately (see README); the eval's own Redis database.
LOCOMO ?=
EVAL_REDIS_URL ?= redis://127.0.0.1:6379/11

.PHONY: help install dev test test-fast lint format validate sam-cli build deploy destroy bench eval eval-smoke resilience load clean

help: ## Show the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: ## Create .venv with the project and its dev tools
	@scripts/bootstrap.sh

dev: install ## Run the whole backend locally: page at http://127.0.0.1:$(PORT)/
	@scripts/ensure-redis.sh || true
	$(VENV)/python -m local --port $(PORT)

test: install validate ## sam validate --lint, then the full test suite (starts Redis, installs Chromium and dynalite if missing)
	@scripts/ensure-redis.sh
	@scripts/ensure-dynalite.sh
	@scripts/ensure-chromium.sh
	SAM_VENV=$(SAM_VENV) $(VENV)/pytest

test-fast: install ## Unit and integration tests only
	@scripts/ensure-redis.sh
	@scripts/ensure-dynalite.sh
	$(VENV)/pytest tests/unit tests/integration

lint: install ## ruff, mypy and cfn-lint
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	$(VENV)/cfn-lint template.yaml -a cfn_lint_serverless.rules

format: install ## Format and fix what ruff can
	$(VENV)/ruff format .
	$(VENV)/ruff check --fix .

sam-cli: ## Install SAM CLI into $(SAM_VENV) unless that version is there
	@test -f $(SAM_VENV)/.sam-$(SAM_CLI_VERSION) || { \
		python3 -m venv $(SAM_VENV) && $(SAM_VENV)/bin/pip install -q 'aws-sam-cli==$(SAM_CLI_VERSION)' \
		&& touch $(SAM_VENV)/.sam-$(SAM_CLI_VERSION); }

validate: sam-cli ## sam validate --lint (no credentials needed)
	$(SAM) validate --lint

build: sam-cli ## sam build into .aws-sam/build, no Docker needed (packaging/Makefile: arm64, Python 3.12)
	$(SAM) build

deploy: sam-cli ## sam deploy the built stack (.aws-sam) with samconfig.toml's ENV=default|dev|prod
	$(SAM) deploy --config-env $(ENV)

destroy: sam-cli ## sam delete the ENV's stack (the ChatSessions table is retained: see README)
	$(SAM) delete --config-env $(ENV)

bench: install ## Per-turn memory cost vs LangChain's chat histories and a naive blob, cold start (writes docs/bench/)
	@scripts/ensure-redis.sh
	$(VENV)/python -m pip install --quiet -e '.[dev,bench]'
	$(VENV)/python -m bench

eval: install ## Memory on LoCoMo (LOCOMO=path/to/locomo.json): strategies vs retrieval baselines, docs/eval/
	@scripts/ensure-redis.sh
	LOCOMO_PATH="$(LOCOMO)" EVAL_REDIS_URL="$(EVAL_REDIS_URL)" $(VENV)/python -m evaluation $(EVAL_ARGS)

eval-smoke: install ## The synthetic planted-fact smoke test of the strategies: docs/eval/smoke/
	$(VENV)/python -m evaluation.smoke

resilience: install ## Re-measure the fault matrix into docs/resilience.md
	@scripts/ensure-redis.sh
	RESILIENCE_RESULTS=docs/resilience.json $(VENV)/pytest -q tests/e2e/test_fault_matrix.py
	$(VENV)/python scripts/resilience_table.py

# The deployed client timeouts (the template's): the load run's moto no longer grows slower with the table (docs/load.md).
load: install ## 500 WebSocket sessions x 20 turns on the local stack, checked exactly-once in DynamoDB (docs/load.md)
	@scripts/ensure-redis.sh
	$(VENV)/python -m local.load --out docs/load

clean: ## Remove build and test leftovers
	rm -rf .aws-sam .pytest_cache .mypy_cache .ruff_cache
