"""`taskq-dev cluster up|down|status|lose-node|restore-node` and `taskq-dev bridge run`.

`cluster up` starts the local control plane detached (pids in `state.json` under
`taskq_dev.cluster.default_root()`) and prints the `export KUBECONFIG=...` line; `down` stops it and
deletes its folder. `bridge run` runs the worker bridge in the foreground until interrupted. Mounted on
the `taskq-dev` app by `taskq_dev.cli`; used by `make cluster-up` / `make cluster-down` and the demo.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from taskq_dev import bridge_daemon, docker, gobuild, nodeimage, realnodes, rootfs, tools
from taskq_dev.bridge import WorkerBridge
from taskq_dev.cluster import DEFAULT_NODES, ClusterError, LocalCluster, default_root
from taskq_dev.kubeaccess import ClusterAccess

cluster_app = typer.Typer(no_args_is_help=True, help="A local Kubernetes control plane with kwok nodes.")
bridge_app = typer.Typer(no_args_is_help=True, help="Real local processes for taskq pods on kwok nodes.")
tools_app = typer.Typer(no_args_is_help=True, help="The pinned external tools the harness runs.")


def _fail(message: str) -> NoReturn:
    typer.echo(f"taskq-dev: {message}", err=True)
    raise typer.Exit(1)


def _running() -> LocalCluster | None:
    found = LocalCluster.load(default_root())
    if found is None or not found.status() or not all(found.status().values()):
        return None
    return found


def _start_real_nodes(cluster: LocalCluster, count: int) -> None:
    """Start `count` real nodes (Docker containers with containerd and a kubelet) for `cluster`."""
    nodes = realnodes.RealNodes(cluster.root, cluster.layout.apiserver_port if cluster.layout else 0)
    if nodes.names():
        typer.echo(f"real nodes already up: {', '.join(nodes.names())}")
        return
    try:
        if not docker.image_exists(docker.IMAGE):
            docker.build_image()
        seconds = nodes.start(count)
    except (realnodes.RealNodeError, docker.DockerError, gobuild.GoBuildError) as exc:
        _fail(str(exc))
    typer.echo(
        f"{count} real nodes Ready in {seconds:.1f} s (label and NoSchedule taint {realnodes.REAL_NODE_LABEL}=true; "
        f"`taskq-dev cluster expose PORT` makes a loopback port reachable from pods at {realnodes.GATEWAY}:PORT)"
    )


@cluster_app.command("up")
def cluster_up(
    nodes: Annotated[int, typer.Option(help="Number of simulated (kwok) nodes.")] = DEFAULT_NODES,
    real_nodes: Annotated[
        int, typer.Option(help="Number of real nodes (Docker containers running containerd and a kubelet).")
    ] = 0,
) -> None:
    """Start etcd, kube-apiserver, controller-manager, scheduler and kwok nodes in the background,
    and optionally real nodes that run the pods' containers."""
    running = _running()
    if running is not None:
        typer.echo(f"cluster already up ({len(running.node_names())} nodes)")
        if real_nodes:
            _start_real_nodes(running, real_nodes)
    else:
        stale = LocalCluster.load(default_root())
        if stale is not None:
            stale.down()
        cluster = LocalCluster(default_root(), nodes=nodes)
        try:
            seconds = cluster.up()
        except (ClusterError, gobuild.GoBuildError) as exc:
            _fail(str(exc))
        typer.echo(
            f"cluster up in {seconds:.1f} s: {cluster.server}, {nodes} kwok nodes, "
            f"{cluster.resident_bytes() / 2**20:.0f} MiB resident"
        )
        if real_nodes:
            _start_real_nodes(cluster, real_nodes)
    typer.echo(f"export KUBECONFIG={default_root() / 'admin.kubeconfig'}")


@cluster_app.command("down")
def cluster_down() -> None:
    """Stop every process of the local cluster (and a detached bridge) and delete its state."""
    if bridge_daemon.stop():
        typer.echo("bridge stopped")
    found = LocalCluster.load(default_root())
    if found is None:
        typer.echo("no local cluster recorded")
        return
    found.down()
    typer.echo("cluster down")


@cluster_app.command("status")
def cluster_status() -> None:
    """Each component's liveness, the resident memory, and the nodes as the API sees them."""
    found = LocalCluster.load(default_root())
    if found is None:
        _fail("no local cluster recorded; run `taskq-dev cluster up`")
    for name, alive in found.status().items():
        typer.echo(f"{name:34} {'running' if alive else 'STOPPED'}")
    typer.echo(f"resident memory: {found.resident_bytes() / 2**20:.0f} MiB")
    typer.echo(f"kubeconfig: {found.kubeconfig}")
    listed = ClusterAccess(found.kubeconfig).kubectl("get", "nodes", check=False, timeout=15)
    typer.echo(listed.stdout or listed.stderr)


@cluster_app.command("expose")
def cluster_expose(port: int) -> None:
    """Make a loopback port (RabbitMQ, the store, ...) reachable from real nodes' pods at the gateway."""
    found = _running_or_fail()
    try:
        address = realnodes.expose(port, realnodes.cluster_key(found.root))
    except realnodes.RealNodeError as exc:
        _fail(str(exc))
    typer.echo(f"127.0.0.1:{port} is reachable from real nodes and their pods at {address}")


@cluster_app.command("lose-node")
def cluster_lose_node(name: str) -> None:
    """Kill a node's kwok (its kubelet): it turns NotReady and its pods are evicted."""
    found = _running_or_fail()
    found.lose_node(name)
    typer.echo(f"{name} lost: NotReady after the grace period, then its pods are evicted")


@cluster_app.command("restore-node")
def cluster_restore_node(name: str) -> None:
    """Start a lost node's kwok again."""
    found = LocalCluster.load(default_root())
    if found is None:
        _fail("no local cluster recorded")
    access = ClusterAccess(found.kubeconfig, local=found)
    access.restore_node(name)
    typer.echo(f"{name} Ready")


def _running_or_fail() -> LocalCluster:
    found = LocalCluster.load(default_root())
    if found is None:
        _fail("no local cluster recorded; run `taskq-dev cluster up`")
    return found


@bridge_app.command("run")
def bridge_run(
    kubeconfig: Annotated[
        Optional[Path], typer.Option(help="Cluster to watch (default: the local cluster's admin kubeconfig).")
    ] = None,
) -> None:
    """Run the worker bridge in the foreground until Ctrl-C; process logs go under the cluster state."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = kubeconfig or default_root() / "admin.kubeconfig"
    if not config.exists():
        _fail(f"{config} does not exist; run `taskq-dev cluster up`")
    bridge = WorkerBridge(config, default_root() / "bridge").start()
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        bridge.stop()


@tools_app.command("build")
def tools_build(
    real_nodes: Annotated[
        Optional[bool],  # noqa: UP045 - typer reads the annotation at run time
        typer.Option(
            "--real-nodes/--no-real-nodes",
            help="also the kubelet and the node and pause images (needs Docker); default: unless TASKQ_REAL_NODES=0",
        ),
    ] = None,
) -> None:
    """Resolve or build every harness tool (kube binaries, etcd, kwok, helm, FerretDB, toxiproxy, the RabbitMQ 4.0 root,
    and for real nodes the kubelet, the node image and the pause image).

    Run before the tests (`.ci/run`, `make test`) so that no cold build happens inside a test's time limit.
    """
    started = time.monotonic()
    resolved: dict[str, object] = {}
    try:
        resolved.update(tools.all_cluster_tools())
        resolved["ferretdb"] = tools.ferretdb_binary()
        resolved.update(tools.toxiproxy_binaries())
        resolved["rabbitmq-trixie"] = rootfs.ensure_root(rootfs.RABBITMQ_TRIXIE)
        if real_nodes if real_nodes is not None else os.environ.get("TASKQ_REAL_NODES") != "0":
            resolved["kubelet"] = tools.kubelet_binary()
            resolved["node-image"] = nodeimage.ensure_node_image()
            resolved["pause-image"] = nodeimage.ensure_pause_image()
    except (gobuild.GoBuildError, rootfs.RootfsError, docker.DockerError) as exc:
        _fail(str(exc))
    for name, path in resolved.items():
        typer.echo(f"{name:24} {path}")
    typer.echo(f"ready in {time.monotonic() - started:.0f} s")
