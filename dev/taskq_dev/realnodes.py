"""Real nodes for the local control plane: privileged Docker containers running containerd and a kubelet.

Each node is a container from the node image (`taskq_dev.nodeimage`) on the Docker network
`taskq-nodes` (bridge `taskq-br0`, 172.29.0.0/24, no masquerading: nothing off this machine is
reachable). Its kubelet (built from the same k8s.io/kubernetes module as the control plane) registers
with a client certificate `system:node:<name>` from the cluster's CA, and pods get addresses from a
bridge CNI network of their own per node (10.245.<index>.0/24).

The control plane and the test services listen on loopback. The host makes chosen loopback ports
reachable from the nodes (and their pods) on the gateway address 172.29.0.1 with one DNAT rule per
port (`expose`), plus `route_localnet` on the bridge; each node routes the `kubernetes` Service
address to the API server the same way, so in-cluster clients work without kube-proxy.

Real nodes carry the label and the NoSchedule taint `taskq.io/real-node=true`, so pods land on them
only when they ask to (`REAL_NODE_SELECTOR`, `REAL_NODE_TOLERATION`) and everything else keeps
landing on the kwok nodes. Containers are labelled with their cluster, so `remove_for_cluster` finds
them again after the starting process is gone. Called by `taskq_dev.cluster` (down),
`taskq-dev cluster up --real-nodes N`, and the `real_nodes` test fixture.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from taskq_dev import apiserver, docker, nodeimage, pki, ports, tools

NETWORK = "taskq-nodes"
BRIDGE = "taskq-br0"
SUBNET = "172.29.0.0/24"
GATEWAY = "172.29.0.1"
"""The host's address on the node network: exposed loopback ports and the API server are reached here."""
POD_CIDR = "10.245.{index}.0/24"
SERVICE_IP = "10.96.0.1"
"""The `kubernetes` Service address (first address of the cluster's service range)."""

REAL_NODE_LABEL = "taskq.io/real-node"
REAL_NODE_SELECTOR = {REAL_NODE_LABEL: "true"}
REAL_NODE_TOLERATION = {"key": REAL_NODE_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
CLUSTER_LABEL = "taskq.io/cluster"
NODE_LABEL = "taskq.io/node"
RULE_COMMENT = "taskq-realnodes"
NODE_LEASE_SECONDS = 8
"""The kubelet renews its lease every quarter of this (2 s), well inside the 12 s node grace period."""
READY_TIMEOUT = 180.0
PAUSE_ATTEMPTS = 5
NODE_PRIVILEGES = (
    "--cap-add=ALL", "--cap-drop=SYS_RESOURCE", "--security-opt=seccomp=unconfined",
    "--security-opt=apparmor=unconfined", "--security-opt=systempaths=unconfined",
    "--device-cgroup-rule=a *:* rwm", "--device=/dev/kmsg",
)
"""Almost `--privileged`: that asks for CAP_SYS_RESOURCE, which this machine's bounding set lacks, so
runc refuses it. The entrypoint remounts the node's cgroups writable itself."""


class RealNodeError(RuntimeError):
    """A node container, the node network or a host rule could not be set up; the message says which."""


def node_name(index: int) -> str:
    return f"real-node-{index}"


def cluster_key(root: Path) -> str:
    """A short stable id of a cluster folder, used in container names, labels and rule comments."""
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]


def _run(argv: Sequence[str], *, timeout: float = 120, check: bool = True, input: bytes | None = None,
         ) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(list(argv), check=False, capture_output=True, timeout=timeout, input=input)
    if check and result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace").strip()
        raise RealNodeError(f"`{' '.join(argv[:4])} ...` failed (exit {result.returncode}): {output[-1500:]}")
    return result


def _docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    return _run([docker.docker_binary(), *args], timeout=timeout, check=check).stdout.decode().strip()


# --- the node network and the host side ----------------------------------------------------------


def ensure_network() -> None:
    """The `taskq-nodes` Docker network (made once, kept), with loopback routing enabled on its bridge."""
    docker.ensure_daemon()
    if _run([docker.docker_binary(), "network", "inspect", NETWORK], check=False).returncode != 0:
        _docker(
            "network", "create", "--driver=bridge", f"--subnet={SUBNET}", f"--gateway={GATEWAY}",
            "--opt", f"com.docker.network.bridge.name={BRIDGE}",
            "--opt", "com.docker.network.bridge.enable_ip_masquerade=false",
            "--label", "taskq.io/harness=realnodes", NETWORK,
        )
    # Packets from the bridge may be DNATed to 127.0.0.1 only with route_localnet on that interface.
    Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet").write_text("1\n")


NAT_CHAINS = ("PREROUTING", "OUTPUT")
"""PREROUTING: connections from nodes and pods; OUTPUT: from this host to the gateway address (so one
URL, e.g. in a Secret, works for host processes and pods alike)."""


def _rule(chain: str, port: int, key: str) -> list[str]:
    incoming = ["-i", BRIDGE] if chain == "PREROUTING" else []
    return [
        chain, *incoming, "-d", f"{GATEWAY}/32", "-p", "tcp", "--dport", str(port),
        "-m", "comment", "--comment", f"{RULE_COMMENT}:{key}",
        "-j", "DNAT", "--to-destination", f"{ports.LOOPBACK}:{port}",
    ]


def expose(port: int, key: str) -> str:
    """Make loopback port `port` reachable at `GATEWAY:port` from the node network and this host;
    return that address. Rules are tagged with `key` (a cluster key) so `unexpose_all(key)` removes them."""
    ensure_network()
    for chain in NAT_CHAINS:
        rule = _rule(chain, port, key)
        if _run(["iptables", "-t", "nat", "-C", *rule], check=False).returncode != 0:
            _run(["iptables", "-t", "nat", "-A", *rule])
    return f"{GATEWAY}:{port}"


def _tagged_rules(key: str) -> list[list[str]]:
    found = []
    for chain in NAT_CHAINS:
        listed = _run(["iptables", "-t", "nat", "-S", chain], check=False).stdout.decode()
        found += [shlex.split(line[3:]) for line in listed.splitlines()
                  if line.startswith("-A ") and f"{RULE_COMMENT}:{key}" in line]
    return found


def unexpose_all(key: str) -> int:
    """Delete every DNAT rule tagged with `key`; return how many."""
    rules = _tagged_rules(key)
    for rule in rules:
        _run(["iptables", "-t", "nat", "-D", *rule], check=False)
    return len(rules)


# --- the nodes ------------------------------------------------------------------------------------


@dataclass
class RealNodes:
    """The real nodes of the local cluster rooted at `root` (its `pki/` and API server port)."""

    root: Path
    apiserver_port: int

    @property
    def key(self) -> str:
        return cluster_key(self.root)

    def container(self, name: str) -> str:
        return f"taskq-{self.key}-{name}"

    def node_dir(self, name: str) -> Path:
        return self.root / "real-nodes" / name

    def names(self) -> list[str]:
        """The nodes whose containers exist (running or not), by node name."""
        out = _docker("ps", "-a", "--filter", f"label={CLUSTER_LABEL}={self.key}",
                      "--format", f'{{{{.Label "{NODE_LABEL}"}}}}', check=False)
        return sorted(line for line in out.splitlines() if line)

    # -- lifecycle --

    def start(self, count: int, images: Sequence[str] = (docker.IMAGE,), timeout: float = READY_TIMEOUT) -> float:
        """Start `count` nodes (importing `images` from Docker into each) and wait until they are Ready;
        return the seconds it took. Nodes that fail to come up are removed again."""
        started = time.monotonic()
        kubelet = tools.kubelet_binary()
        node_image = nodeimage.ensure_node_image()
        archives = {"pause": nodeimage.image_archive(nodeimage.ensure_pause_image())}
        for image in images:
            archives[image.replace("/", "_").replace(":", "_")] = nodeimage.image_archive(image)
        ensure_network()
        expose(self.apiserver_port, self.key)
        names = [node_name(index) for index in range(count)]
        try:
            for index, name in enumerate(names):
                self._write_node_files(name)
                self._run_container(name, index, node_image, kubelet, archives)
            self.wait_ready(names, timeout=max(timeout - (time.monotonic() - started), 10.0))
        except BaseException:
            self.remove_all()
            raise
        return time.monotonic() - started

    def remove_all(self) -> None:
        """Remove every node container of this cluster, its Node objects' host rules, and its files."""
        remove_for_cluster(self.root)

    def kill(self, name: str) -> None:
        """`docker kill` the node: kubelet, containerd and every pod process die at once."""
        _docker("kill", self.container(name))

    def pause(self, name: str, attempts: int = PAUSE_ATTEMPTS) -> None:
        """`docker pause` the node (a partition-like loss: processes frozen, not dead).

        The cgroup v1 freezer gives up ("unable to freeze") when the node's processes keep changing
        while it freezes them (a kubelet probe starting runc, say); runc then thaws the node again, so
        the pause is simply tried again, up to `attempts` times.
        """
        for attempt in range(1, attempts + 1):
            try:
                _docker("pause", self.container(name))
                return
            except RealNodeError as exc:
                if "unable to freeze" not in str(exc) or attempt == attempts:
                    raise
            print(f"taskq-dev: docker pause of {name} did not freeze it (attempt {attempt}); trying again", file=sys.stderr)
            time.sleep(0.5)

    def unpause(self, name: str) -> None:
        _docker("unpause", self.container(name))

    def restart(self, name: str) -> None:
        """Start a killed node's container again (fresh tmpfs state: images re-imported, pods gone)."""
        _docker("start", self.container(name))

    def revive_all(self, timeout: float = READY_TIMEOUT) -> list[str]:
        """Unpause paused nodes and start killed ones again, then wait until all are Ready; return the
        names that needed it."""
        revived = []
        for name in self.names():
            state = self.state(name)
            if state == "paused":
                self.unpause(name)
            elif state != "running":
                self.restart(name)
            else:
                continue
            revived.append(name)
        if revived:
            self.wait_ready(self.names(), timeout=timeout)
        return revived

    def state(self, name: str) -> str:
        """Docker's view of the node container: running, paused, exited, ... (empty if it is gone)."""
        return _docker("inspect", "--format", "{{.State.Status}}", self.container(name), check=False)

    def running(self, name: str) -> bool:
        return self.state(name) == "running"

    def exec(self, name: str, *argv: str, timeout: float = 60) -> str:
        """Run a command in the node container (e.g. `crictl`-less inspection with `ctr`)."""
        return _docker("exec", self.container(name), *argv, timeout=timeout)

    def logs(self, name: str, component: str = "kubelet", lines: int = 40) -> str:
        path = self.node_dir(name) / "logs" / f"{component}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- readiness --

    def ready_nodes(self) -> set[str]:
        """The real nodes the API server lists as Ready."""
        server = f"https://{ports.LOOPBACK}:{self.apiserver_port}"
        return apiserver.ready_nodes(self.root / "pki", server, label_selector=f"{REAL_NODE_LABEL}=true")

    def wait_ready(self, names: Sequence[str], timeout: float = READY_TIMEOUT) -> float:
        def gone() -> str | None:
            for name in names:
                if not self.running(name):
                    return f"node container {name} exited; its log:\n{self.logs(name, 'entrypoint')}\n{self.logs(name)}"
            return None

        try:
            return ports.wait_until(lambda: set(names) <= self.ready_nodes(), timeout=timeout,
                                    what=f"real nodes {', '.join(names)} Ready", interval=0.5, give_up=gone)
        except ports.WaitTimeout as exc:
            tails = "\n".join(f"--- {name} kubelet:\n{self.logs(name)}" for name in names)
            raise RealNodeError(f"{exc}\n{tails}") from None

    # -- internals --

    def _write_node_files(self, name: str) -> None:
        """kubelet config, kubeconfig and client certificate for `name` under `node_dir(name)/etc`."""
        etc = self.node_dir(name) / "etc"
        (etc / "pki").mkdir(parents=True, exist_ok=True)
        (self.node_dir(name) / "logs").mkdir(parents=True, exist_ok=True)
        ca = pki.CertificateAuthority.load(self.root / "pki")
        issued = ca.issue(f"kubelet-{name}", f"system:node:{name}", organization="system:nodes")
        inside = Path("/etc/kubernetes/pki")
        for source, target in ((issued.cert, etc / "pki" / "kubelet.crt"), (issued.key, etc / "pki" / "kubelet.key"),
                               (ca.pair.cert, etc / "pki" / "ca.crt")):
            target.write_bytes(source.read_bytes())
            target.chmod(0o600 if target.suffix == ".key" else 0o644)
        pki.write_kubeconfig(
            etc / "kubelet.kubeconfig", f"https://{GATEWAY}:{self.apiserver_port}", inside / "ca.crt",
            client=pki.CertPair(inside / "kubelet.crt", inside / "kubelet.key"), user=f"system:node:{name}",
            tls_server_name="localhost",
        )
        (etc / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config(), sort_keys=False))

    def _run_container(self, name: str, index: int, image: str, kubelet: Path, archives: dict[str, Path]) -> None:
        container = self.container(name)
        _docker("rm", "--force", container, check=False)
        labels = ",".join([f"{REAL_NODE_LABEL}=true", f"topology.kubernetes.io/zone=real-{index}"])
        argv = [
            "run", "--detach", "--name", container, "--hostname", name, *NODE_PRIVILEGES, "--cgroupns=private",
            "--network", NETWORK, "--label", f"{CLUSTER_LABEL}={self.key}", "--label", f"{NODE_LABEL}={name}",
            "--tmpfs", "/var/lib/containerd:exec,mode=0755", "--tmpfs", "/var/lib/kubelet:exec,mode=0755",
            "--tmpfs", "/run:exec,mode=0755", "--tmpfs", "/tmp:exec,mode=1777",
            "--volume", "/lib/modules:/lib/modules:ro",
            "--volume", f"{kubelet}:/usr/local/bin/kubelet:ro",
            "--volume", f"{self.node_dir(name) / 'etc'}:/etc/kubernetes:ro",
            "--volume", f"{self.node_dir(name) / 'logs'}:/var/log/taskq",
            "--env", f"TASKQ_NODE_NAME={name}", "--env", f"TASKQ_POD_CIDR={POD_CIDR.format(index=index)}",
            "--env", f"TASKQ_API_HOST={GATEWAY}", "--env", f"TASKQ_API_PORT={self.apiserver_port}",
            "--env", f"TASKQ_SERVICE_IP={SERVICE_IP}", "--env", f"TASKQ_NODE_LABELS={labels}",
        ]
        for stem, archive in archives.items():
            argv += ["--volume", f"{archive}:/images/{stem}.tar:ro"]
        _docker(*argv, image)


def kubelet_config() -> dict[str, Any]:
    """The kubelet configuration of every real node (cgroup v1 host, cgroupfs, no swap checks, no
    disk-pressure evictions on the shared disk, images never garbage-collected or pulled)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # the machine runs cgroup v1; kubelet 1.34 still accepts it when told so
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"},
        },
        "authorization": {"mode": "AlwaysAllow"},  # only clients with a cert from the cluster CA get here
        "registerWithTaints": [{k: v for k, v in REAL_NODE_TOLERATION.items() if k != "operator"}],
        "failSwapOn": False,
        "nodeLeaseDurationSeconds": NODE_LEASE_SECONDS,
        "nodeStatusUpdateFrequency": "4s",
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "0%", "nodefs.inodesFree": "0%",
                         "imagefs.available": "0%"},
        "imageGCHighThresholdPercent": 100,
        "serializeImagePulls": False,
        "maxPods": 40,
        "healthzBindAddress": "127.0.0.1",
        "shutdownGracePeriod": "0s",
        "resolvConf": "/etc/resolv.conf",
    }


def remove_for_cluster(root: Path) -> list[str]:
    """Remove every real-node container of the cluster at `root` and its host rules; return the
    containers removed (used by `LocalCluster.down`, also for clusters whose starter is gone)."""
    key = cluster_key(root)
    try:
        out = _docker("ps", "-a", "--filter", f"label={CLUSTER_LABEL}={key}", "--format", "{{.Names}}", check=False)
    except (docker.DockerError, OSError, subprocess.TimeoutExpired):
        return []
    containers = [line for line in out.splitlines() if line]
    for container in containers:
        _docker("rm", "--force", "--volumes", container, timeout=60, check=False)
    unexpose_all(key)
    return containers
