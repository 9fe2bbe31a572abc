# taskq developer commands. `make help` lists them.
#
# Everything runs inside the project virtualenv $(VENV) (created on first use, git-ignored), never in
# the machine's own Python: taskq (editable, with all extras plus test and bench tools) and the
# harness distribution taskq-dev (editable, from dev/) are installed there, and the recipes find
# `taskq-worker`, `taskq-dev`, ... on PATH through $(VENV)/bin.
BASE_PYTHON ?= python3
VENV ?= .venv
VENV_BIN := $(abspath $(VENV))/bin
PYTHON := $(VENV_BIN)/python
PYTEST_ARGS ?=
INSTALLED := $(VENV)/.taskq-installed

export PATH := $(VENV_BIN):$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: help install venv system-deps demo test test-rabbitmq-3.10 lint unit

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

demo: system-deps install ## the main job, live: local control plane + RabbitMQ + store, helm install, a TaskQueue, 2000 tasks, autoscaling on screen
	$(PYTHON) -m taskq_dev.demo

system-deps: ## install missing Debian packages (rabbitmq-server, docker.io, debootstrap, iproute2, python3-venv); check Go
	PYTHON3=$(BASE_PYTHON) bash dev/system-deps.sh

venv: $(PYTHON) ## create the project virtualenv $(VENV)

$(PYTHON):
	$(BASE_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check --upgrade pip

install: $(INSTALLED) ## install taskq[all,test,bench] and taskq-dev (both editable) into $(VENV)

# Reinstalled when either distribution's metadata changes (new dependency, new console script).
$(INSTALLED): pyproject.toml dev/pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install -q --disable-pip-version-check -e '.[all,test,bench]' -e ./dev
	touch $@

LINT_PATHS := worker operator

lint: install ## ruff (lint + format check), mypy strict on the product packages, import contracts
	ruff check $(LINT_PATHS)
	ruff format --check $(LINT_PATHS)
	mypy
	lint-imports

test: system-deps install lint tools ## everything: lint, unit, services, cluster and docker tests (RabbitMQ 4.0), then the worker-flow tests on RabbitMQ 3.10
	$(PYTHON) -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-rabbitmq-3.10

test-rabbitmq-3.10: install ## the worker-flow and failure tests on Debian 12's RabbitMQ 3.10 (still supported)
	TASKQ_TEST_RABBITMQ=3.10 $(PYTHON) -m pytest tests/integration/test_worker_flow.py tests/integration/test_worker_failures.py tests/integration/test_worker_runtime.py -k "not thousand" $(PYTEST_ARGS)

unit: install ## tests that need no servers (tests/unit without the `services` ones)
	$(PYTHON) -m pytest tests/unit -m "not services" $(PYTEST_ARGS)

# --- image, chart, kind (packaging) ---
KIND_CLUSTER ?= taskq-e2e

.PHONY: image chart-schema chart-crd kind-e2e

image: install ## build the taskq image taskq:dev (starts dockerd, makes a local base image and wheelhouse; cached)
	$(PYTHON) -m taskq_dev.cli image build

chart-schema: chart-crd install ## regenerate charts/taskq/values.schema.json from the annotated values.yaml
	$(PYTHON) -m taskq_dev.chart_schema

chart-crd: ## copy crds/taskqueue.yaml (the source of truth) into the chart
	cp crds/taskqueue.yaml charts/taskq/crds/taskqueue.yaml

kind-e2e: ## kind cluster + image + helm install + the cluster e2e suite, then delete the cluster (needs kind, helm, docker that can pull)
	KIND_CLUSTER=$(KIND_CLUSTER) PYTHON=$(PYTHON) PYTEST_ARGS="$(PYTEST_ARGS)" dev/kind-e2e.sh

# --- operator benchmark ---
.PHONY: bench-scaling

bench-scaling: install ## operator scale reaction vs KEDA (built and run for real) and its model, demo drain under both, CPU/RSS with 2,000 TaskQueues, the targetWaitSeconds SLO run, burst plot -> bench/results/scaling.json (needs KUBECONFIG from `taskq-dev cluster up`)
	$(PYTHON) bench/scaling.py

.PHONY: bench-slo

bench-slo: install ## tasksPerReplica vs targetWaitSeconds when tasks get 20x longer mid-run (the operator's policy on a simulated queue) -> bench/results/slo.json
	$(PYTHON) bench/slo.py

# --- local demo (no Kubernetes) ---
.PHONY: demo-local

demo-local: install ## services up, 3 taskq-worker processes, 2000 example tasks with a progress bar, live counts and a summary
	$(PYTHON) -m taskq_dev.demo_local

# --- local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok) ---
.PHONY: tools cluster-up cluster-down

tools: install ## build once (into ~/.cache/taskq) or find every harness tool: kube binaries, etcd, kwok, helm, FerretDB, toxiproxy, the RabbitMQ 4.0 root, the kubelet and node images (make test runs it first, so no cold build runs inside a test's time limit)
	$(PYTHON) -m taskq_dev.cli tools build

cluster-up: install ## start the local control plane with 3 kwok nodes in the background; prints `export KUBECONFIG=...`
	$(PYTHON) -m taskq_dev.cli cluster up $(if $(REAL_NODES),--real-nodes $(REAL_NODES))

cluster-down: install ## stop the local control plane and delete its state
	$(PYTHON) -m taskq_dev.cli cluster down

# --- worker benchmarks ---
.PHONY: bench-worker bench-lookahead

bench-lookahead: install ## drain rate of one worker with prefetch look-ahead 0, 1, one per slot and four per slot -> bench/results/lookahead.json
	$(PYTHON) bench/lookahead.py

bench-worker: install ## one taskq-worker vs Celery (prefork, acks_late, multiplier 1/4) and Dramatiq on 20k no-op tasks, submit_many vs raw pika, idle latency -> bench/results/worker.json
	$(PYTHON) bench/worker.py

# --- dashboard benchmark ---
.PHONY: bench-dashboard

bench-dashboard: install ## dashboard page and live-fragment load times (cold after a start, then p50/max) with 100,000 tasks in the store, explain of each page query -> bench/results/dashboard.json
	$(PYTHON) bench/dashboard.py

# --- chaos run ---
.PHONY: chaos chaos-cluster

CHAOS_TASKS ?= 10000

chaos: install ## the chaos run: 10,000 tasks (CHAOS_TASKS) through taskq-worker processes under faults (SIGKILLs, producer kill and rerun, cut and blackholed connections, broker restart, 10 s store stop) -> bench/results/chaos.json
	$(PYTHON) bench/chaos.py --tasks $(CHAOS_TASKS)

chaos-cluster: install ## the chaos run with the workers as pods of an operator-managed TaskQueue on the local cluster (kwok nodes, the worker bridge), the same faults plus a lost node -> bench/results/chaos-cluster.json
	$(PYTHON) bench/chaos.py --cluster --tasks $(CHAOS_TASKS)
