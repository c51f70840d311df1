.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV := .venv/bin
PORT ?= 8080

.PHONY: help install dev test test-fast lint format validate bench eval resilience load clean

help: ## Show the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: ## Create .venv with the project and its dev tools
	@scripts/bootstrap.sh

dev: install ## Run the whole backend locally: page at http://127.0.0.1:$(PORT)/
	@scripts/ensure-redis.sh || true
	$(VENV)/python -m local --port $(PORT)

test: install ## Run the full test suite (starts Redis, installs Chromium if missing)
	@scripts/ensure-redis.sh
	@scripts/ensure-chromium.sh
	$(VENV)/pytest

test-fast: install ## Unit and integration tests only
	@scripts/ensure-redis.sh
	$(VENV)/pytest tests/unit tests/integration

lint: install ## ruff, mypy and cfn-lint
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	$(VENV)/cfn-lint template.yaml

format: install ## Format and fix what ruff can
	$(VENV)/ruff format .
	$(VENV)/ruff check --fix .

validate: ## sam validate --lint (SAM CLI in its own venv: it pins boto3/pydantic)
	@test -x .tools/sam/bin/sam || (python3 -m venv .tools/sam && .tools/sam/bin/pip install -q aws-sam-cli)
	SAM_CLI_TELEMETRY=0 .tools/sam/bin/sam validate --lint

bench: install ## Per-turn memory cost vs LangChain's chat histories and a naive blob, cold start (writes docs/bench/)
	@scripts/ensure-redis.sh
	$(VENV)/python -m pip install --quiet -e '.[dev,bench]'
	$(VENV)/python -m bench

eval: install ## Memory strategies measured on 200-turn conversations: docs/eval/ (offline unless ANTHROPIC_API_KEY)
	$(VENV)/python -m pip install --quiet -e '.[dev,bench]'
	$(VENV)/python -m evaluation

resilience: install ## Re-measure the fault matrix into docs/resilience.md
	@scripts/ensure-redis.sh
	RESILIENCE_RESULTS=docs/resilience.json $(VENV)/pytest -q tests/e2e/test_fault_matrix.py
	$(VENV)/python scripts/resilience_table.py

# One process on 2 cores is an overloaded emulator: longer client timeouts than deployed (docs/load.md).
LOAD_TIMEOUTS := STORAGE__CONNECT_TIMEOUT_SECONDS=2 STORAGE__READ_TIMEOUT_SECONDS=5 \
	CACHE__SOCKET_TIMEOUT_SECONDS=2 CACHE__CONNECT_TIMEOUT_SECONDS=2 \
	OUTBOX__CONNECT_TIMEOUT_SECONDS=2 OUTBOX__READ_TIMEOUT_SECONDS=5
load: install ## 500 WebSocket sessions x 20 turns on the local stack, checked exactly-once in DynamoDB (docs/load.md)
	@scripts/ensure-redis.sh
	$(LOAD_TIMEOUTS) $(VENV)/python -m local.load --out docs/load

clean: ## Remove build and test leftovers
	rm -rf .aws-sam .pytest_cache .mypy_cache .ruff_cache
