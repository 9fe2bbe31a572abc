"""A real Kubernetes control plane as local processes: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and one kwok process per simulated node, all on free loopback ports.

`LocalCluster(root).up()` lays out certificates, keys and kubeconfigs under `root`, starts the
processes detached (they outlive the starting command; their pids are in `root/state.json`), and
waits until the API answers, the controllers are healthy, the nodes are Ready and the default
service account exists. `LocalCluster.load(root)` finds a running cluster again; `down()` stops every
process and deletes `root`. Called by `taskq-dev cluster`, the pytest `cluster` fixture, the
benchmarks and the demo.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from taskq.errors import TaskqError
from taskq_dev import apiserver, kwok, paths, pki, ports, realnodes, tools
from taskq_dev.processes import BackgroundProcess

DEFAULT_NODES = 3
START_TIMEOUT = 120.0
NODE_MONITOR_GRACE = "12s"
"""How long a node may miss heartbeats before the node lifecycle controller marks it unknown."""
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
FRONT_PROXY_CLIENT = "front-proxy-client"
"""Common name of the API server's client cert towards aggregated API servers."""


class ClusterError(TaskqError):
    """The local control plane could not be started, reached or stopped."""


def default_root() -> Path:
    """Where `taskq-dev cluster up` keeps the cluster (its admin kubeconfig is `admin.kubeconfig`)."""
    return paths.state_dir("cluster")


def sweep_orphaned_sessions(parent: Path) -> list[Path]:
    """Stop and delete the clusters under `parent/<pid>` whose owning process (a test session killed
    before its teardown) is gone; return their folders."""
    swept = []
    for folder in parent.iterdir() if parent.exists() else []:
        if not folder.name.isdigit() or Path(f"/proc/{folder.name}").exists():
            continue
        orphan = LocalCluster.load(folder)
        if orphan is not None:
            orphan.down()
        if (folder / "real-nodes").exists():  # its state was unreadable: still remove its node containers
            realnodes.remove_for_cluster(folder)
        shutil.rmtree(folder, ignore_errors=True)
        swept.append(folder)
    return swept


@dataclass
class ClusterLayout:
    """Ports and node names of one cluster; saved in `state.json` with the pids."""

    etcd_port: int
    etcd_peer_port: int
    apiserver_port: int
    controller_manager_port: int
    scheduler_port: int
    nodes: list[str]
    processes: dict[str, dict[str, int | None]] = field(default_factory=dict)

    @classmethod
    def allocate(cls, node_count: int) -> ClusterLayout:
        return cls(
            etcd_port=ports.free_port(),
            etcd_peer_port=ports.free_port(),
            apiserver_port=ports.free_port(),
            controller_manager_port=ports.free_port(),
            scheduler_port=ports.free_port(),
            nodes=[kwok.node_name(index) for index in range(node_count)],
        )


class LocalCluster:
    """One local control plane rooted at a folder (certificates, data, logs, state)."""

    def __init__(self, root: Path, nodes: int = DEFAULT_NODES) -> None:
        self.root = root
        self.node_count = nodes
        self.layout: ClusterLayout | None = None
        self._processes: dict[str, BackgroundProcess] = {}

    # --- paths -------------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (client cert in `system:masters`)."""
        return self.root / "admin.kubeconfig"

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def server(self) -> str:
        """The API server URL."""
        return f"https://{ports.LOOPBACK}:{self._layout().apiserver_port}"

    def _layout(self) -> ClusterLayout:
        if self.layout is None:
            raise ClusterError(f"no cluster is laid out under {self.root}")
        return self.layout

    # --- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def load(cls, root: Path) -> LocalCluster | None:
        """The cluster recorded under `root`, with handles on its processes, or None."""
        try:
            record = json.loads((root / "state.json").read_text())
        except (OSError, ValueError):
            return None
        cluster = cls(root, nodes=len(record["nodes"]))
        cluster.layout = ClusterLayout(**record)
        for name, process_record in cluster.layout.processes.items():
            process = cluster._process_for(name)
            process.adopt(process_record)
        return cluster

    def up(self, timeout: float = START_TIMEOUT) -> float:
        """Start everything and wait until the cluster is usable; return the seconds it took.

        If anything fails, whatever was started is stopped again before the error is raised.
        """
        started = time.monotonic()
        deadline = started + timeout
        tools.all_cluster_tools()  # builds whatever is missing before the clock matters
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        self.layout = ClusterLayout.allocate(self.node_count)
        try:
            self._write_pki()
            self._write_kwok_config()
            self._start("etcd", deadline, self._etcd_ready)
            self._start("kube-apiserver", deadline, self._apiserver_ready)
            self._create_nodes()
            self._start("kube-controller-manager", deadline, lambda: self._healthz(self._layout().controller_manager_port))
            self._start("kube-scheduler", deadline, lambda: self._healthz(self._layout().scheduler_port))
            for node in self._layout().nodes:
                self._start(f"kwok-{node}", deadline, None)
            self._wait(deadline, "every node Ready", lambda: self._ready_nodes() == set(self._layout().nodes))
            self._wait(deadline, "the default service account", self._default_service_account_exists)
        except BaseException:
            self.down()
            raise
        return time.monotonic() - started

    def down(self) -> None:
        """Stop every process (kwok first, etcd last), remove real-node containers, delete the folder."""
        if (self.root / "real-nodes").exists():
            realnodes.remove_for_cluster(self.root)
        for name in reversed(list(self._processes)):
            self._processes[name].terminate(timeout=10.0)
        self._processes.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def status(self) -> dict[str, bool]:
        """Whether each process of the cluster is alive, by component name."""
        return {name: process.alive() for name, process in self._processes.items()}

    def resident_bytes(self) -> int:
        """The summed resident memory of the cluster's live processes."""
        total = 0
        for process in self._processes.values():
            if process.pid is None or not process.alive():
                continue
            try:
                for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                continue
        return total

    # --- nodes -------------------------------------------------------------------------------

    def node_names(self) -> list[str]:
        return list(self._layout().nodes)

    def lose_node(self, name: str) -> None:
        """Kill the kwok process of node `name` (its "kubelet"): heartbeats stop, so after the grace
        period the node lifecycle controller marks it unreachable, taints it and evicts its pods."""
        process = self._processes.get(f"kwok-{name}")
        if process is None:
            raise ClusterError(f"no simulated node named {name}")
        process.signal(signal.SIGKILL)
        process.wait_exit(5.0)
        self._save_state()

    def restore_node(self, name: str) -> None:
        """Start the kwok process of node `name` again; the node turns Ready on its next heartbeat."""
        if name not in self._layout().nodes:
            raise ClusterError(f"no simulated node named {name}")
        if not self._process_for(f"kwok-{name}").alive():
            self._launch(f"kwok-{name}")

    # --- internals ---------------------------------------------------------------------------

    def _write_pki(self) -> None:
        ca = pki.CertificateAuthority(self.pki_dir)
        ca.issue(
            "apiserver",
            "kube-apiserver",
            server_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                          "kubernetes.default.svc.cluster.local"),
            server_ips=(ports.LOOPBACK, "10.96.0.1"),
        )
        pki.service_account_keys(self.pki_dir)
        clients = {
            "admin": ("kubernetes-admin", "system:masters"),
            "controller-manager": ("system:kube-controller-manager", None),
            "scheduler": ("system:kube-scheduler", None),
            "kwok": ("kwok", "system:masters"),
            # the API server's identity towards kubelets (exec, logs) of the real nodes
            "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
        }
        for stem, (common_name, group) in clients.items():
            pair = ca.issue(stem, common_name, organization=group)
            target = self.kubeconfig if stem == "admin" else self.root / f"{stem}.kubeconfig"
            pki.write_kubeconfig(target, self.server, ca.pair.cert, client=pair, user=stem)
        # the aggregation layer: the API server's identity towards extension API servers (KEDA's
        # metrics server in bench/scaling.py), which trust its X-Remote-* headers for this name only
        ca.issue("front-proxy-client", FRONT_PROXY_CLIENT)

    def _write_kwok_config(self) -> None:
        (self.root / "kwok.yaml").write_text(
            "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions: {}\n"
        )

    def _argv(self, name: str) -> list[str]:
        layout = self._layout()
        pki_dir = self.pki_dir
        if name == "etcd":
            peer = f"http://{ports.LOOPBACK}:{layout.etcd_peer_port}"
            client = f"http://{ports.LOOPBACK}:{layout.etcd_port}"
            return [
                str(tools.etcd_binary()), "--name=taskq-local", f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=taskq-local={peer}", "--unsafe-no-fsync", "--log-level=warn",
                "--quota-backend-bytes=2147483648",
            ]
        if name == "kube-apiserver":
            return [
                str(tools.kube_binary("kube-apiserver")),
                f"--etcd-servers=http://{ports.LOOPBACK}:{layout.etcd_port}",
                f"--bind-address={ports.LOOPBACK}", f"--advertise-address={ports.LOOPBACK}",
                f"--secure-port={layout.apiserver_port}",
                f"--tls-cert-file={pki_dir / 'apiserver.crt'}", f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
                f"--client-ca-file={pki_dir / 'ca.crt'}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki_dir / 'sa.pub'}",
                f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
                # Node: the authorizer for real nodes' kubelets (system:node:<name>); everyone else RBAC
                "--authorization-mode=Node,RBAC", f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--kubelet-client-certificate={pki_dir / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki_dir / 'apiserver-kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--endpoint-reconciler-type=none", "--allow-privileged=true", "--profiling=false",
                f"--cert-dir={pki_dir}",
                # aggregation layer: proxy to extension API servers (APIServices) with a client cert,
                # straight to an endpoint of their Service (no kube-proxy here)
                f"--requestheader-client-ca-file={pki_dir / 'ca.crt'}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
                "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki_dir / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki_dir / 'front-proxy-client.key'}",
                "--enable-aggregator-routing=true",
            ]
        if name == "kube-controller-manager":
            kubeconfig = self.root / "controller-manager.kubeconfig"
            return [
                str(tools.kube_binary("kube-controller-manager")),
                f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--bind-address={ports.LOOPBACK}", f"--secure-port={layout.controller_manager_port}",
                "--leader-elect=false", "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki_dir / 'sa.key'}", f"--root-ca-file={pki_dir / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}", "--controllers=*",
                f"--node-monitor-grace-period={NODE_MONITOR_GRACE}", "--node-monitor-period=2s",
                "--profiling=false",
            ]
        if name == "kube-scheduler":
            kubeconfig = self.root / "scheduler.kubeconfig"
            return [
                str(tools.kube_binary("kube-scheduler")),
                f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--bind-address={ports.LOOPBACK}", f"--secure-port={layout.scheduler_port}",
                "--leader-elect=false", "--profiling=false",
            ]
        if name.startswith("kwok-"):
            node = name.removeprefix("kwok-")
            return kwok.kwok_argv(
                tools.kwok_binary(), self.root / "kwok.kubeconfig", node, layout.nodes.index(node),
                self.root / "kwok.yaml",
            )
        raise ClusterError(f"unknown component {name}")

    def _process_for(self, name: str) -> BackgroundProcess:
        """The handle of component `name` (its command line is resolved only when it is started, so
        `status` and `down` never need the binaries)."""
        process = self._processes.get(name)
        if process is None:
            process = BackgroundProcess(argv=(), log_path=self.log_dir / f"{name}.log", cwd=self.root)
            self._processes[name] = process
        return process

    def _launch(self, name: str) -> BackgroundProcess:
        process = self._process_for(name)
        process.argv = self._argv(name)
        process.start()
        self._save_state()
        return process

    def _save_state(self) -> None:
        layout = self._layout()
        layout.processes = {name: process.record() for name, process in self._processes.items()}
        self.state_file.write_text(json.dumps(asdict(layout), indent=2))

    def _start(self, name: str, deadline: float, ready: Any) -> None:
        process = self._launch(name)
        if ready is None:
            return

        def exited() -> str | None:
            if process.alive():
                return None
            return f"{name} exited; last log lines:\n{process.log_tail()}"

        self._wait(deadline, f"{name} to answer", ready, give_up=exited)

    def _wait(self, deadline: float, what: str, condition: Any, give_up: Any = None) -> None:
        try:
            ports.wait_until(condition, timeout=max(deadline - time.monotonic(), 1.0), what=what,
                             interval=0.25, give_up=give_up)
        except ports.WaitTimeout as exc:
            raise ClusterError(str(exc)) from None

    def _client(self) -> httpx.Client:
        return apiserver.admin_client(self.pki_dir, self.server)

    def _etcd_ready(self) -> bool:
        try:
            answer = httpx.get(f"http://{ports.LOOPBACK}:{self._layout().etcd_port}/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200 and answer.json().get("health") == "true"

    def _apiserver_ready(self) -> bool:
        try:
            with self._client() as client:
                return client.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def _healthz(self, port: int) -> bool:
        try:
            return httpx.get(f"https://{ports.LOOPBACK}:{port}/healthz", verify=False, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _create_nodes(self) -> None:
        with self._client() as client:
            for index, name in enumerate(self._layout().nodes):
                answer = client.post("/api/v1/nodes", json=kwok.node_manifest(name, index))
                if answer.status_code not in (201, 409):
                    raise ClusterError(f"creating node {name} failed: HTTP {answer.status_code} {answer.text[:300]}")

    def _ready_nodes(self) -> set[str]:
        return apiserver.ready_nodes(self.pki_dir, self.server)

    def _default_service_account_exists(self) -> bool:
        try:
            with self._client() as client:
                return client.get("/api/v1/namespaces/default/serviceaccounts/default").status_code == 200
        except httpx.HTTPError:
            return False
