.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV := .venv/bin
PORT ?= 8080
# SAM CLI lives in a venv of its own (it pins boto3/pydantic); CI points SAM_VENV at a cache.
SAM_VENV ?= .tools/sam
SAM_CLI_VERSION ?= 1.170.0
SAM := SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam
ENV ?= default
# checkov lives in a venv of its own too: its dependency tree pins what the project's may not.
SCAN_VENV ?= .venv-scan
CHECKOV_VERSION ?= 3.3.30
# make eval: the LoCoMo benchmark's JSON, downloaded separately (see README); the eval's own Redis database.
LOCOMO ?=
EVAL_REDIS_URL ?= redis://127.0.0.1:6379/11

# sam local invoke in Docker (README, "One function in Docker"): built for this machine's
# architecture and for the Python of the Lambda image (the stand-in scripts/build-lambda-image.sh
# builds where the official one cannot be pulled says which in its chat-memory.python label).
LOCAL_ARCH ?= $(if $(filter aarch64 arm64,$(shell uname -m)),arm64,x86_64)
LOCAL_MACHINE = $(if $(filter arm64,$(LOCAL_ARCH)),aarch64,x86_64)
LOCAL_IMAGE = public.ecr.aws/lambda/python:3.12-$(LOCAL_ARCH)
LOCAL_PYTHON ?= $(shell docker image inspect --format '{{ index .Config.Labels "chat-memory.python" }}' \
	$(LOCAL_IMAGE) 2>/dev/null | grep -x '3\.[0-9]*' || echo 3.12)
LOCAL_BUILD := .aws-sam/local
ENV_VARS ?= events/env.json
LOCAL_SOURCES := template.yaml $(shell find functions layers packaging -type f -not -path '*/__pycache__/*' \
	-not -path '*.egg-info/*' 2>/dev/null)

.PHONY: help install dev test test-fast lint scan scan-cli format validate sam-cli build deploy destroy bench eval eval-smoke resilience load clean docker local-build invoke

help: ## Show the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: ## Create .venv with the project and its dev tools
	@scripts/bootstrap.sh

dev: install ## Run the whole backend locally: page at http://127.0.0.1:$(PORT)/
	@scripts/ensure-redis.sh || true
	$(VENV)/python -m local --port $(PORT)

test: install validate docker ## sam validate --lint, then the full test suite (starts Redis and Docker, installs Chromium and dynalite if missing)
	@scripts/ensure-redis.sh
	@scripts/ensure-dynalite.sh
	@scripts/ensure-chromium.sh
	SAM_VENV=$(SAM_VENV) $(VENV)/pytest

test-fast: install ## Unit and integration tests only
	@scripts/ensure-redis.sh
	@scripts/ensure-dynalite.sh
	$(VENV)/pytest tests/unit tests/integration

lint: install scan ## ruff, mypy, cfn-lint and the checkov scan of template.yaml
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	$(VENV)/cfn-lint template.yaml -a cfn_lint_serverless.rules

scan-cli: ## Install checkov into $(SCAN_VENV) unless that version is there
	@test -f $(SCAN_VENV)/.checkov-$(CHECKOV_VERSION) || { \
		python3 -m venv $(SCAN_VENV) && $(SCAN_VENV)/bin/pip install -q 'checkov==$(CHECKOV_VERSION)' \
		&& touch $(SCAN_VENV)/.checkov-$(CHECKOV_VERSION); }

# Every remaining finding is skipped in the template itself, each with its reason (Metadata: checkov).
# checkov does not expand Fn::ForEach (it would pass over the loops' resources unchecked), so it
# scans the template as local/template.py expands it for every other reader.
SCAN_TEMPLATE := .aws-sam/scan/template.json
scan: install scan-cli ## checkov static scan of template.yaml: fails on any finding not skipped with a reason
	@mkdir -p $(dir $(SCAN_TEMPLATE))
	$(VENV)/python -m local.template > $(SCAN_TEMPLATE)
	$(SCAN_VENV)/bin/checkov -f $(SCAN_TEMPLATE) --framework cloudformation --compact --quiet --skip-download

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

docker: install ## A Docker daemon, and the Lambda image sam local invoke runs (built once where it cannot be pulled)
	@scripts/ensure-docker.sh
	@PYTHON=$(VENV)/python scripts/build-lambda-image.sh python3.12 $(LOCAL_ARCH)

local-build: $(LOCAL_BUILD)/build/template.yaml ## sam build for sam local invoke: this machine's architecture, the image's Python

$(LOCAL_BUILD)/build/template.yaml: $(LOCAL_SOURCES) | sam-cli docker
	LAMBDA_PYTHON_VERSION=$(LOCAL_PYTHON) \
	LAMBDA_PLATFORMS="manylinux_2_28_$(LOCAL_MACHINE) manylinux2014_$(LOCAL_MACHINE)" \
	$(SAM) build --build-dir $(LOCAL_BUILD)/build --cache-dir $(LOCAL_BUILD)/cache \
		--parameter-overrides Architecture=$(LOCAL_ARCH)
	@touch $@

# --language-extensions: the built template's directory has no samconfig.toml to ask SAM CLI to
# expand its Fn::ForEach loops.
invoke: local-build ## sam local invoke FUNCTION=ConnectFunction EVENT=events/connect.json in Docker (ENV_VARS=events/env.json)
	@test -n "$(FUNCTION)" -a -n "$(EVENT)" || { echo "usage: make invoke FUNCTION=<logical id> EVENT=<file>" >&2; exit 2; }
	$(SAM) local invoke $(FUNCTION) --language-extensions --template-file $(LOCAL_BUILD)/build/template.yaml --event $(EVENT) \
		--env-vars $(ENV_VARS) --parameter-overrides Architecture=$(LOCAL_ARCH) --skip-pull-image \
		--add-host host.docker.internal:host-gateway

deploy: sam-cli ## sam deploy the built stack (.aws-sam) with samconfig.toml's ENV=default|dev|prod
	$(SAM) deploy --config-env $(ENV)

destroy: sam-cli ## sam delete the ENV's stack (the ChatSessions table is retained: see README)
	$(SAM) delete --config-env $(ENV)

bench: install ## Per-turn memory cost vs LangChain's chat histories and a naive blob, cold start (writes docs/bench/)
	@scripts/ensure-redis.sh
	$(VENV)/python -m pip install --quiet -e '.[dev,bench]'
	$(VENV)/python -m bench
	$(VENV)/python -m bench.retrieval --out docs/bench
	$(VENV)/python -m bench.session_list --out docs/bench

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
