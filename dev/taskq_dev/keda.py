"""KEDA (operator + metrics API server) built from its Go module and run against the local control plane.

Used by `bench/scaling.py` only (built on demand, not by `taskq-dev tools build`: a cold build takes
minutes). `keda_binaries()` builds `keda` (cmd/operator) and `keda-adapter` (cmd/adapter) into
`~/.cache/taskq/tools/keda/v<version>` in a wrapper module that carries KEDA's own `replace` lines.
`running_keda(...)` applies KEDA's CRDs, runs both as host processes with the cluster's kubeconfig and
registers the metrics server as the `external.metrics.k8s.io` APIService (the API server routes to a
Service whose EndpointSlice points at this host; it needs the front-proxy flags `taskq_dev.cluster` sets),
so the controller-manager's HPA controller reads KEDA's metrics as it would in a real cluster.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from taskq_dev import gobuild, paths, pki, ports, versions
from taskq_dev.processes import stop_processes

KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_BINARIES = {"keda": "operator", "keda-adapter": "adapter"}
"""Installed name -> the name `go build` gives the module's `cmd/<dir>` main."""


def module_dir(version: str = versions.KEDA) -> Path:
    """The unpacked KEDA module in the Go module cache (downloaded if missing)."""
    return Path(gobuild.download(KEDA_MODULE, version)["Dir"])


_REPLACE_BLOCK = re.compile(r"^replace\s*\((.*?)^\)", re.MULTILINE | re.DOTALL)
_REPLACE_LINE = re.compile(r"^replace\s+(\S+(?:\s+v\S+)?)\s+=>\s+(.+?)\s*$", re.MULTILINE)


def replaces_of(gomod: str) -> dict[str, str]:
    """The `replace` directives of a go.mod (block and single-line forms), old -> new, comments dropped."""
    found: dict[str, str] = {}
    lines = [line for block in _REPLACE_BLOCK.findall(gomod) for line in block.splitlines()]
    lines = [f"replace {line.strip()}" for line in lines]
    for line in [*lines, *gomod.splitlines()]:
        match = _REPLACE_LINE.match(line.split("//", 1)[0].rstrip())
        if match:
            found[re.sub(r"\s+", " ", match.group(1))] = match.group(2)
    return found


def crd_files(version: str = versions.KEDA) -> list[Path]:
    """KEDA's CRD manifests (ScaledObject, ScaledJob, TriggerAuthentication, ...) from its module."""
    return sorted((module_dir(version) / "config" / "crd" / "bases").glob("*.yaml"))


def _tool() -> gobuild.GoTool:
    """The pinned build, without its replace lines (they follow from the version; see `keda_binaries`)."""
    return gobuild.GoTool(
        module=KEDA_MODULE,
        version=versions.KEDA,
        packages=[f"{KEDA_MODULE}/cmd/{main}" for main in KEDA_BINARIES.values()],
        go_directive="1.26.0",
        ldflags=(f"-X {KEDA_MODULE}/version.Version={versions.KEDA}",),
    )


def _build_dir() -> Path:
    return paths.tool_dir("keda", versions.KEDA) / "build"


def build_in_progress() -> bool:
    """Whether some process holds the build lock of the pinned KEDA (a cold build is compiling)."""
    lock = _build_dir() / ".build.lock"
    if not lock.exists():
        return False
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def cached_binaries() -> dict[str, Path] | None:
    """The binaries when a finished build of the pinned version is cached, else None (never compiles)."""
    if not gobuild.is_current(_tool(), _build_dir(), list(KEDA_BINARIES.values())):
        return None
    return keda_binaries()


def keda_binaries() -> dict[str, Path]:
    """`keda` (operator) and `keda-adapter` (metrics API server), built on first use (long when cold:
    about 3,700 packages; over an hour on 2 busy cores)."""
    out_dir = paths.tool_dir("keda", versions.KEDA)
    installed = {name: out_dir / name for name in KEDA_BINARIES}
    tool = _tool()
    build_dir = _build_dir()
    if all(path.exists() for path in installed.values()) and gobuild.is_current(tool, build_dir, list(KEDA_BINARIES.values())):
        return installed
    gomod = (module_dir() / "go.mod").read_text()
    tool = gobuild.GoTool(**{**tool.__dict__, "replaces": replaces_of(gomod)})
    built = gobuild.build(tool, build_dir, list(KEDA_BINARIES.values()))
    for name, main in KEDA_BINARIES.items():
        if not installed[name].exists() or installed[name].stat().st_mtime < built[main].stat().st_mtime:
            installed[name].unlink(missing_ok=True)
            installed[name].hardlink_to(built[main])
    return installed


# --- running KEDA against the harness control plane (`running_keda`) ----------------------------

NAMESPACE = "keda"
METRICS_SERVICE = "keda-metrics-apiserver"
OPERATOR_SERVICE = "keda-operator"
APISERVICE = "v1beta1.external.metrics.k8s.io"
AVAILABLE_TIMEOUT_S = 120.0
Kubectl = Callable[..., str]
"""`kubectl(*args, input=None, check=True) -> stdout`, as `bench/scaling.py` has one."""


class KedaError(RuntimeError):
    """KEDA could not be set up against the control plane; the message says which step failed."""


def host_address() -> str:
    """The host's own non-loopback IPv4 address (the API server reaches the metrics server there:
    Endpoints and EndpointSlices may not point at loopback): the first global address `ip` lists."""
    listing = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, check=False
    ).stdout
    found = re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", listing)
    if not found:
        raise KedaError("no non-loopback IPv4 address on this host for the metrics server's endpoint")
    return found[0]


def cluster_pki(kubeconfig: Path) -> Path:
    """The `pki/` folder of the harness cluster a kubeconfig written by `taskq_dev.cluster` points at."""
    config = yaml.safe_load(kubeconfig.read_text())
    ca = Path(config["clusters"][0]["cluster"]["certificate-authority"])
    if not (ca.parent / "ca.key").exists():
        raise KedaError(f"{kubeconfig} is not a harness cluster's kubeconfig (no CA key next to {ca})")
    return ca.parent


def aggregation_layer_ready(kubectl: Kubectl) -> bool:
    """Whether the API server was started with the front-proxy (requestheader) flags."""
    found = kubectl("get", "configmap", "-n", "kube-system", "extension-apiserver-authentication", "-o", "json", check=False)
    return bool(found) and "requestheader-client-ca-file" in json.loads(found).get("data", {})


def _write_certs(pki_dir: Path, folder: Path, address: str) -> None:
    """One certificate for the operator's gRPC server, the metrics server's gRPC client (mutual TLS)
    and the metrics server's HTTPS endpoint, in the `tls.crt`/`tls.key`/`ca.crt` layout KEDA reads."""
    ca = pki.CertificateAuthority.load(pki_dir)
    names = tuple(
        f"{service}{suffix}"
        for service in (OPERATOR_SERVICE, METRICS_SERVICE)
        for suffix in ("", f".{NAMESPACE}", f".{NAMESPACE}.svc", f".{NAMESPACE}.svc.cluster.local")
    )
    pair = ca.issue("keda", "keda", server_names=("localhost", *names), server_ips=("127.0.0.1", address), client_auth=True)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(pair.cert, folder / "tls.crt")
    shutil.copy(pair.key, folder / "tls.key")
    shutil.copy(ca.pair.cert, folder / "ca.crt")


def _registration(address: str, port: int, ca_bundle: bytes) -> list[dict[str, Any]]:
    """Namespace, selector-less Service + EndpointSlice (and Endpoints) at the host, and the APIService."""
    labels = {"app.kubernetes.io/name": METRICS_SERVICE}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE, "labels": labels},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port, "protocol": "TCP"}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{METRICS_SERVICE}-host",
                "namespace": NAMESPACE,
                "labels": {"kubernetes.io/service-name": METRICS_SERVICE, "endpointslice.kubernetes.io/managed-by": "taskq-dev"},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        },
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE},
            "subsets": [{"addresses": [{"ip": address}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": APISERVICE},
            "spec": {
                "group": "external.metrics.k8s.io",
                "version": "v1beta1",
                "service": {"name": METRICS_SERVICE, "namespace": NAMESPACE, "port": 443},
                "caBundle": base64.b64encode(ca_bundle).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


def _apiservice_available(kubectl: Kubectl) -> bool:
    found = kubectl("get", "apiservice", APISERVICE, "-o", "json", check=False)
    conditions = json.loads(found).get("status", {}).get("conditions", []) if found else []
    return any(c.get("type") == "Available" and c.get("status") == "True" for c in conditions)


@dataclass
class KedaProcesses:
    """The two KEDA processes of one `running_keda` block, and their log files."""

    operator: subprocess.Popen[bytes]
    adapter: subprocess.Popen[bytes]
    logs: dict[str, Path]


@contextmanager
def running_keda(kubeconfig: Path, kubectl: Kubectl, work_dir: Path, *, watch_namespace: str = "") -> Iterator[KedaProcesses]:
    """KEDA's CRDs applied, its operator and metrics server as host processes, the metrics server
    registered as `external.metrics.k8s.io` and Available; everything but the CRDs removed again."""
    if not aggregation_layer_ready(kubectl):
        raise KedaError(
            "the API server runs without the aggregation layer's front-proxy flags "
            "(a cluster started before they were added): restart it with `taskq-dev cluster up`"
        )
    binaries = keda_binaries()
    for crd in crd_files():
        kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    # not `kubectl wait`: it fails outright on a CRD created so recently that it has no conditions yet
    ports.wait_until(
        lambda: (
            "Established=True"
            in kubectl(
                "get",
                "crd",
                "scaledobjects.keda.sh",
                "-o",
                "jsonpath={range .status.conditions[*]}{.type}={.status} {end}",
                check=False,
            )
        ),
        timeout=60,
        what="KEDA's ScaledObject CRD to be Established",
        interval=0.5,
    )
    address = host_address()
    certs = work_dir / "certs"
    _write_certs(cluster_pki(kubeconfig), certs, address)
    secure_port, grpc_port = ports.free_port(host=address), ports.free_port()
    objects = _registration(address, secure_port, (certs / "ca.crt").read_bytes())
    env = dict(
        os.environ,
        KUBECONFIG=str(kubeconfig),
        KEDA_CLUSTER_OBJECT_NAMESPACE=NAMESPACE,
        POD_NAMESPACE=NAMESPACE,
        WATCH_NAMESPACE=watch_namespace,
    )
    operator_argv = [
        str(binaries["keda"]),
        f"--kubeconfig={kubeconfig}",
        "--leader-elect=false",
        f"--metrics-bind-address={ports.LOOPBACK}:{ports.free_port()}",
        f"--health-probe-bind-address={ports.LOOPBACK}:{ports.free_port()}",
        f"--metrics-service-bind-address={ports.LOOPBACK}:{grpc_port}",
        f"--cert-dir={certs}",
        "--enable-cert-rotation=false",
        "--enable-webhook-patching=false",
        "--enable-apiservice-patching=false",
        "--zap-log-level=info",
    ]
    adapter_argv = [
        str(binaries["keda-adapter"]),
        f"--lister-kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={address}",
        f"--secure-port={secure_port}",
        f"--cert-dir={certs}",
        f"--tls-cert-file={certs / 'tls.crt'}",
        f"--tls-private-key-file={certs / 'tls.key'}",
        f"--metrics-service-address={ports.LOOPBACK}:{grpc_port}",
        f"--port={ports.free_port()}",
        "--zap-log-level=info",
    ]
    logs = {"operator": work_dir / "keda-operator.log", "adapter": work_dir / "keda-adapter.log"}
    started: list[subprocess.Popen[bytes]] = []
    try:
        kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects[:-1]}))
        for name, argv in (("operator", operator_argv), ("adapter", adapter_argv)):
            with open(logs[name], "wb") as out:
                started.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT))
        kubectl("apply", "-f", "-", input=json.dumps(objects[-1]))

        def available() -> bool:
            for name, process in zip(logs, started, strict=True):
                if process.poll() is not None:
                    tail = "\n".join(logs[name].read_text(errors="replace").splitlines()[-15:])
                    raise KedaError(f"keda {name} exited with {process.returncode}:\n{tail}")
            return _apiservice_available(kubectl)

        try:
            ports.wait_until(available, timeout=AVAILABLE_TIMEOUT_S, what="KEDA's APIService to be Available", interval=0.5)
        except ports.WaitTimeout:
            status = kubectl("get", "apiservice", APISERVICE, "-o", "jsonpath={.status.conditions}", check=False)
            raise KedaError(f"the APIService {APISERVICE} never became Available: {status}") from None
        yield KedaProcesses(started[0], started[1], logs)
    finally:
        # an unavailable aggregated API breaks discovery (and namespace deletion) for everyone: remove it first
        kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found", "--wait=false", check=False)
        stop_processes(started, 15.0)
        kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)
