"""The chaos run's cluster mode: its workers are the pods of an operator-managed TaskQueue.

`cluster_mode(services, work_dir, plan)` starts the harness's control plane (`taskq_dev.cluster`, kwok
nodes), applies the CRD, a namespace and the connection Secrets, runs `taskq-operator` for that
namespace as a process and the worker bridge (`taskq_dev.bridge`), and yields a `ClusterMode` for
`taskq_dev.chaos.run(..., mode=...)`. The run's TaskQueue keeps `plan.workers` replicas; the bridge
runs each pod as a host `taskq-worker` process whose broker URL goes through a toxiproxy listener of
its own (so one pod's connection can be cut or blackholed, as in process mode).

The faults are those of process mode, with the workers' side done the Kubernetes way:

- a SIGKILL hits a random pod's worker process group; the bridge restarts it with a kubelet-like
  backoff the first time, and the second time a pod is hit it is also deleted (grace 0), so the
  Deployment replaces it;
- one node is lost (`node_loss_at_s`): its kwok process is killed and the bridge SIGKILLs its pods'
  processes at once; the node lifecycle controller taints it, the pods are evicted after the
  TaskQueue's 10 s toleration and rescheduled elsewhere; the time until every replica runs again off
  that node is recorded, then the node is restored.

The operator's own outbox and stuck sweeps are switched off (interval one day): the run's sweeper
does the outbox sweep with the operator's defaults, so every republished id is known and a second
copy of a message can be named as a duplicate's cause. Used by `bench/chaos.py --cluster`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from taskq_dev import manifests, paths
from taskq_dev.bridge import WorkerBridge
from taskq_dev.chaos import ChaosPlan, ChaosServices, RunState
from taskq_dev.cluster import LocalCluster, sweep_orphaned_sessions
from taskq_dev.faultproxy import FaultProxy, Proxy, url_port, url_through
from taskq_dev.kubeaccess import ClusterAccess
from taskq_dev.operator_process import running_operator

CRD = Path(__file__).resolve().parents[2] / "crds" / "taskqueue.yaml"
TASKQUEUE = "chaos"
NODE_LOSS_AT_S = 32.0
"""When the node is lost (seconds after the run starts): after the broker restart, before the store stop."""
RESCHEDULE_TIMEOUT_S = 180.0
OPERATOR_ENV = {"TASKQ_SWEEP_INTERVAL_SECONDS": "86400", "TASKQ_STUCK_INTERVAL_SECONDS": "86400"}


@dataclass
class PodWorker:
    """One worker pod's current process, as the chaos run's killer sees it (`slot` and `worker_id`
    are the pod's name, which the worker reports as its id and the ledger records)."""

    slot: str
    worker_id: str
    pid: int


@dataclass
class PodFleet:
    """The TaskQueue's worker pods, through the bridge; answers what the chaos run asks of `Fleet`."""

    access: ClusterAccess
    bridge: WorkerBridge
    namespace: str
    proxies: dict[str, Proxy] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    replaced: list[str] = field(default_factory=list)

    def live(self) -> list[PodWorker]:
        return [PodWorker(pod, pod, pid) for pod, pid in sorted(self.bridge.processes().items())]

    def kill(self, worker: PodWorker) -> None:
        """SIGKILL the pod's process group; the second time a pod is hit, delete the pod too (grace 0)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        self.hits[worker.slot] += 1
        if self.hits[worker.slot] >= 2:
            self.access.kubectl(
                "delete",
                "pod",
                "-n",
                self.namespace,
                worker.slot,
                "--grace-period=0",
                "--force",
                "--wait=false",
                check=False,
                timeout=30,
            )
            self.replaced.append(worker.slot)

    def start(self, slot: str) -> None:
        """Nothing to start: the bridge restarts the process, the Deployment replaces a deleted pod."""
        return None

    def exited_on_their_own(self) -> list[Any]:
        return []  # the bridge restarts those; its log says so

    def stop_all(self, grace_s: float = 15.0) -> None:
        return None  # the bridge and the cluster are stopped by `cluster_mode`


class ClusterMode:
    """`taskq_dev.chaos.WorkerMode` for the pods of an operator-managed TaskQueue on kwok nodes."""

    name = "cluster"

    def __init__(
        self,
        access: ClusterAccess,
        namespace: str,
        services: ChaosServices,
        plan: ChaosPlan,
        secrets: tuple[str, str],
        log: Callable[[str], None],
    ) -> None:
        self.access = access
        self.namespace = namespace
        self.services = services
        self.plan = plan
        self.secrets = secrets
        self.log = log
        self.node_loss_at_s = NODE_LOSS_AT_S
        self.description = (
            f"the pods of TaskQueue {TASKQUEUE} ({plan.workers} replicas) managed by taskq-operator on the local "
            "control plane's kwok nodes; the worker bridge runs each as a host taskq-worker process, its broker "
            "URL through a toxiproxy listener of its own"
        )
        self.fault_proxy: FaultProxy | None = None
        self.fleet: PodFleet | None = None
        self.bridge: WorkerBridge | None = None
        self.node_loss: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._proxies: dict[str, Proxy] = {}

    # --- the bridge's hook: each pod's broker URL through its own proxy ---------------------------

    def pod_env(self, pod: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
        name = pod["metadata"]["name"]
        if self.fault_proxy is None or "TASKQ_AMQP_URL" not in env:
            return env
        with self._lock:
            proxy = self._proxies.get(name)
            if proxy is None:
                proxy = self.fault_proxy.proxy(f"pod-{name}", url_port(self.services.amqp_url))
                self._proxies[name] = proxy
        return {**env, "TASKQ_AMQP_URL": url_through(env["TASKQ_AMQP_URL"], proxy)}

    # --- WorkerMode ---------------------------------------------------------------------------

    def open_fleet(self, worker_env: dict[str, str], fault_proxy: FaultProxy, database: str, queue: str) -> PodFleet:
        """Apply the run's TaskQueue and wait (bounded) until its replicas run as bridged processes."""
        assert self.bridge is not None
        self.fault_proxy = fault_proxy
        plan = self.plan
        body = manifests.taskqueue(
            TASKQUEUE,
            self.namespace,
            queue=queue,
            broker_secret=self.secrets[0],
            store_secret=self.secrets[1],
            database=database,
            worker={
                "image": "taskq:dev",
                "taskModules": ["taskq_dev.chaos_tasks"],
                "concurrency": plan.concurrency,
                "terminationGracePeriodSeconds": 30,  # must be >= the task timeout (the CRD says so)
            },
            tasks={"timeoutSeconds": 30, "retryBackoff": {"initialSeconds": 0.5, "maxSeconds": 2}},
            scaling={"minReplicas": plan.workers, "maxReplicas": plan.workers, "pollIntervalSeconds": 1},
        )
        self.access.kubectl("apply", "-f", "-", input=json.dumps(body))
        fleet = PodFleet(self.access, self.bridge, self.namespace)
        fleet.proxies = self._proxies  # shared: the hook adds each new pod's proxy
        deadline = time.monotonic() + 180
        while len(fleet.live()) < plan.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the TaskQueue's {plan.workers} worker pods did not run within 180 s")
            time.sleep(1)
        self.fleet = fleet
        self.log(f"chaos: {plan.workers} worker pods run as bridged processes: {sorted(p.slot for p in fleet.live())}")
        return fleet

    def extra_faults(self, state: RunState) -> dict[str, Callable[[], None]]:
        return {"node_loss": lambda: self._lose_a_node(state)}

    def finish(self, report: dict[str, Any]) -> None:
        counts = report["fault_counts"]
        loss = self.node_loss
        report["node_loss"] = loss
        report["checks"]["node_lost_and_rescheduled"] = (
            counts.get("node_lost", 0) > 0 and loss.get("rescheduled_after_s") is not None
        )
        report["pass"] = all(report["checks"].values())
        if self.fleet is not None:
            report["pods_deleted_by_the_killer"] = len(self.fleet.replaced)
            report["pod_proxies"] = len(self._proxies)

    # --- the node loss -------------------------------------------------------------------------

    def _pods(self) -> list[dict[str, Any]]:
        listing = self.access.kubectl(
            "get",
            "pods",
            "-n",
            self.namespace,
            "-l",
            f"app.kubernetes.io/instance={TASKQUEUE}",
            "-o",
            "json",
            timeout=30,
        ).stdout
        items: list[dict[str, Any]] = json.loads(listing)["items"]
        return items

    def _lose_a_node(self, state: RunState) -> None:
        wait = self.node_loss_at_s - state.timeline.now()
        if wait > 0 and state.stop.wait(wait):
            return
        assert self.bridge is not None
        running = {pod: pid for pod, pid in self.bridge.processes().items()}
        placement = {
            p["metadata"]["name"]: p["spec"].get("nodeName", "")
            for p in self._pods()
            if p["metadata"]["name"] in running and not p["metadata"].get("deletionTimestamp")
        }
        if not placement:
            state.errors.append("node_loss: no running worker pod")
            return
        by_node = Counter(placement.values())
        victim = max(sorted(by_node), key=lambda n: by_node[n])  # the node with the most worker pods
        lost_pods = sorted(pod for pod, node in placement.items() if node == victim)
        event = state.timeline.add(
            "node_lost",
            node=victim,
            pods=lost_pods,
            detail="kwok killed: heartbeats stop; the bridge SIGKILLs its pods' processes",
        )
        for pod in lost_pods:
            state.timeline.add("worker_node_lost", target=pod, node=victim)
        lost_at = time.monotonic()
        self.access.lose_node(victim)
        figures: dict[str, Any] = {
            "node": victim,
            "pods": lost_pods,
            "at_s": event["at_s"],
            "note": "times after the loss as polls saw them (each poll: two kubectl reads, then 0.5 s)",
        }
        deadline = lost_at + RESCHEDULE_TIMEOUT_S
        for _ in range(int(RESCHEDULE_TIMEOUT_S) + 10):
            if time.monotonic() > deadline or state.stop.is_set():
                break
            polled = time.monotonic()
            try:
                pods = self._pods()
                node = json.loads(self.access.kubectl("get", "node", victim, "-o", "json", timeout=30).stdout)
            except Exception as exc:  # noqa: BLE001 - the API server is loaded; try again
                figures.setdefault("read_errors", []).append(type(exc).__name__)
                time.sleep(1)
                continue
            elapsed = round(time.monotonic() - lost_at, 1)
            figures["poll_took_s_max"] = max(figures.get("poll_took_s_max", 0.0), round(time.monotonic() - polled, 2))
            taints = {t.get("key") for t in node.get("spec", {}).get("taints") or []}
            if "tainted_after_s" not in figures and "node.kubernetes.io/unreachable" in taints:
                figures["tainted_after_s"] = elapsed
            if "evicted_after_s" not in figures and any(
                p["metadata"]["name"] in lost_pods and p["metadata"].get("deletionTimestamp") for p in pods
            ):
                figures["evicted_after_s"] = elapsed
            live = self.bridge.processes()
            elsewhere = [
                p["metadata"]["name"]
                for p in pods
                if p["status"].get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")
                and p["spec"].get("nodeName") != victim
                and p["metadata"]["name"] in live
            ]
            if len(elsewhere) >= self.plan.workers:
                figures["rescheduled_after_s"] = elapsed
                figures["pods_new_since_the_loss"] = sorted(set(elsewhere) - set(placement))
                break
            time.sleep(0.5)
        if "rescheduled_after_s" not in figures:
            state.errors.append(f"node_loss: the lost node's pods were not running elsewhere within {RESCHEDULE_TIMEOUT_S:.0f} s")
        state.timeline.close(event)
        event["rescheduled_after_s"] = figures.get("rescheduled_after_s")
        self.node_loss = figures
        self.log(f"chaos: node {victim} lost with {lost_pods}: {figures}")
        self.access.restore_node(victim, timeout=60)
        state.timeline.add("node_restored", node=victim)


def _management_url(services: ChaosServices) -> str:
    user, password = services.management_auth
    parts = urlsplit(services.management_base)
    return f"{parts.scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"


@contextlib.contextmanager
def cluster_mode(
    services: ChaosServices, work_dir: Path, plan: ChaosPlan, *, log: Callable[[str], None] = print
) -> Iterator[ClusterMode]:
    """The control plane, the operator and the bridge for one cluster-mode run; all stopped afterwards."""
    sessions = paths.state_dir("chaos-cluster")
    sweep_orphaned_sessions(sessions)
    local = LocalCluster(sessions / str(os.getpid()))
    started = time.monotonic()
    local.up()
    log(f"chaos: local control plane up in {time.monotonic() - started:.0f} s ({len(local.node_names())} kwok nodes)")
    access = ClusterAccess(kubeconfig=local.kubeconfig, local=local)
    bridge: WorkerBridge | None = None
    bridge_log: logging.Handler | None = None
    try:
        access.kubectl("apply", "-f", str(CRD))
        access.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/taskqueues.taskq.io")
        namespace = "taskq-chaos"
        access.kubectl("create", "namespace", namespace)
        secrets = ("chaos-rabbit", "chaos-mongo")
        for name, data in (
            (secrets[0], {"amqp-url": services.amqp_url, "management-url": _management_url(services)}),
            (secrets[1], {"mongodb-uri": services.mongodb_uri}),
        ):
            body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "stringData": data}
            access.kubectl("apply", "-f", "-", input=json.dumps(body))
        mode = ClusterMode(access, namespace, services, plan, secrets, log)
        work_dir.mkdir(parents=True, exist_ok=True)
        # The bridge's own log (starts, restarts with their exit codes, node losses) next to the pods' logs.
        bridge_log = logging.FileHandler(work_dir / "bridge.log")
        bridge_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger("taskq_dev.bridge").addHandler(bridge_log)
        logging.getLogger("taskq_dev.bridge").setLevel(logging.INFO)
        with running_operator(
            namespace,
            work_dir / "operator.log",
            env={"KUBECONFIG": str(local.kubeconfig), **OPERATOR_ENV},
            start_timeout=60,
            stop_timeout=15,
        ):
            bridge = WorkerBridge(local.kubeconfig, work_dir / "pods", worker_env=mode.pod_env).start()
            mode.bridge = bridge
            access.node_loss_listeners.append(bridge.node_lost)
            yield mode
            bridge.stop()
            bridge = None
    finally:
        if bridge is not None:
            bridge.stop()
        if bridge_log is not None:
            logging.getLogger("taskq_dev.bridge").removeHandler(bridge_log)
            bridge_log.close()
        local.down()


def cluster_plan(plan: ChaosPlan) -> ChaosPlan:
    """The plan as cluster mode runs it (the same faults and times; more time to settle: pods come back slower)."""
    return dataclasses.replace(plan, settle_timeout_s=max(plan.settle_timeout_s, 240.0))
