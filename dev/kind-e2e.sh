#!/usr/bin/env bash
# `make kind-e2e`: the cluster end-to-end suite on a kind cluster instead of the local harness.
#
# 1. create a kind cluster (its own kubeconfig; deleted on exit, even on failure);
# 2. build the image with the same tooling as the harness run (`taskq-dev image build`), on the
#    Dockerfile's default slim Python base, and `kind load` it;
# 3. `helm install` the chart with the bundled RabbitMQ and MongoDB (examples/values-dev.yaml);
# 4. port-forward the broker and the store to loopback so the tests (on this machine) reach them,
#    and tell the suite the in-cluster URLs its TaskQueue Secrets must carry;
# 5. run the same pytest cluster suite with TASKQ_USE_EXISTING_CLUSTER=1 and this KUBECONFIG.
#
# Needs: docker that can pull (kindest/node, python:3.11-slim-bookworm, rabbitmq, mongo), kind,
# helm, kubectl on PATH, and taskq installed (`make install`). See docs/kind.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${KIND_CLUSTER:-taskq-e2e}"
PYTHON="${PYTHON:-python3}"
NAMESPACE="${KIND_NAMESPACE:-taskq-system}"
RELEASE=taskq
DEV_PASSWORD=taskq-dev-only   # examples/values-dev.yaml; the cluster lives only for this run
WORK="$(mktemp -d)"
export KUBECONFIG="$WORK/kubeconfig"
forwards=()

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

for tool in kind helm kubectl docker; do
  command -v "$tool" >/dev/null || { echo "kind-e2e needs $tool on PATH (see docs/kind.md)" >&2; exit 2; }
done

cleanup() {
  status=$?
  for pid in "${forwards[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ "$status" -ne 0 ]; then
    echo "kind-e2e failed; state of the cluster:" >&2
    kubectl get pods -A -o wide >&2 || true
    kubectl -n "$NAMESPACE" logs deployment/"$RELEASE"-operator --tail=100 >&2 || true
  fi
  step "delete kind cluster $CLUSTER"
  kind delete cluster --name "$CLUSTER" || true
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT

step "create kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --wait 180s

step "build and load the image"
"$PYTHON" -m taskq_dev.cli image build --base-image default
kind load docker-image taskq:dev --name "$CLUSTER"

step "helm install (bundled RabbitMQ and MongoDB)"
helm install "$RELEASE" charts/taskq --namespace "$NAMESPACE" --create-namespace \
  --values examples/values-dev.yaml --wait --timeout 300s
kubectl -n "$NAMESPACE" rollout status statefulset/"$RELEASE"-rabbitmq --timeout 300s
kubectl -n "$NAMESPACE" rollout status statefulset/"$RELEASE"-mongodb --timeout 300s

step "port-forward the broker and the store to loopback"
kubectl -n "$NAMESPACE" port-forward svc/"$RELEASE"-rabbitmq 5672:5672 15672:15672 >"$WORK/pf-rabbitmq.log" 2>&1 &
forwards+=($!)
kubectl -n "$NAMESPACE" port-forward svc/"$RELEASE"-mongodb 27017:27017 >"$WORK/pf-mongodb.log" 2>&1 &
forwards+=($!)
for port in 5672 15672 27017; do
  for _ in $(seq 1 60); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 1
  done
done

step "cluster end-to-end suite"
# The suite reaches the services through the port-forwards; the Secrets it gives TaskQueues carry
# the in-cluster URLs (pods resolve the Services, not this machine's loopback).
export TASKQ_USE_EXISTING_CLUSTER=1
export AMQP_URL="amqp://taskq:${DEV_PASSWORD}@127.0.0.1:5672/%2F"
export RABBITMQ_MANAGEMENT_URL="http://taskq:${DEV_PASSWORD}@127.0.0.1:15672"
export MONGODB_URI="mongodb://taskq:${DEV_PASSWORD}@127.0.0.1:27017/?authSource=admin"
export TASKQ_E2E_CLUSTER_AMQP_URL="amqp://taskq:${DEV_PASSWORD}@${RELEASE}-rabbitmq.${NAMESPACE}.svc:5672/%2F"
export TASKQ_E2E_CLUSTER_MONGODB_URI="mongodb://taskq:${DEV_PASSWORD}@${RELEASE}-mongodb.${NAMESPACE}.svc:27017/?authSource=admin"
export TASKQ_E2E_OPERATOR_NAMESPACE="$NAMESPACE"
"$PYTHON" -m pytest -m cluster tests/cluster ${PYTEST_ARGS:-}
