# taskq developer commands. `make help` lists them.
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: help install demo test lint unit

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

install: ## install taskq and its test/bench extras (editable)
	$(PYTHON) -m pip install -q -e '.[test,bench]'

lint: ## import contracts (pure cores do no I/O) and strict typing of the cores
	lint-imports
	mypy worker/taskq/core operator/taskq_operator/core

test: install lint ## everything: lint, unit, services, cluster and docker tests (starts what it needs)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

unit: ## fast tests that need no servers
	$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)
