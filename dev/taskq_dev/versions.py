"""Every pinned version of an external tool the harness builds or runs, in one place.

Read by `taskq_dev.gobuild` (what to build) and by the docs; bump a version here and the next
run rebuilds into a new cache folder.
"""

from __future__ import annotations

KUBERNETES = "1.34.4"
"""kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (from k8s.io/kubernetes)."""

ETCD = "3.6.4"
"""etcd server; the version k8s.io/kubernetes itself requires, built from the same wrapper module."""

KWOK = "0.7.0"
HELM = "3.22.0"
FERRETDB = "1.24.2"
TOXIPROXY = "2.5.0"
"""toxiproxy-server and toxiproxy-cli, the fault proxy of the chaos tests (the newest the Go module proxy serves)."""

KEDA = "2.21.0"
"""keda operator and metrics API server (github.com/kedacore/keda/v2), built on demand by `taskq_dev.keda`
for `make bench-scaling`; the newest the Go module proxy serves (go 1.26, k8s.io v0.36)."""
