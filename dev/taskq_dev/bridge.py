"""The worker bridge: real local processes for the taskq pods that kwok "runs" on simulated nodes.

kwok nodes run no containers. For every pod labelled `app.kubernetes.io/name=taskq-worker` (or
`taskq-operator`) that is Running on a Ready kwok node, the bridge starts the pod's command on this
machine with the pod's environment (see `taskq_dev.podenv`). It stops the process the way a kubelet
would: SIGTERM and the pod's grace period when the pod goes away normally, SIGKILL at once when the
pod's node is lost; a process that exits on its own is restarted with a backoff. An operator pod gets a
kubeconfig with a token minted for its ServiceAccount (TokenRequest API), so it runs with the chart's
RBAC. Called by the pytest `bridge` fixture and `taskq-dev bridge run`.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from taskq_dev import pki
from taskq_dev.kwok import KWOK_NODE_ANNOTATION
from taskq_dev.podenv import OPERATOR_APP, WORKER_APP, PodEnvError, container_env, local_argv, main_container
from taskq_dev.processes import stop_processes

log = logging.getLogger("taskq_dev.bridge")

NAME_LABEL = "app.kubernetes.io/name"
POD_SELECTOR = f"{NAME_LABEL} in ({WORKER_APP},{OPERATOR_APP})"
HOST_ENV_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "TASKQ_CACHE_DIR")
"""Host variables a local process needs to run at all; everything else comes from the pod."""
ENV_OVERRIDES = {"TASKQ_HEALTH_PORT": "0"}
"""Forced on every bridged process: many pods share this machine's ports."""
RESTART_BACKOFF_MAX = 30.0
TOKEN_SECONDS = 24 * 3600


@dataclass
class BridgedProcess:
    """The local process standing in for one pod's main container."""

    namespace: str
    pod: str
    uid: str
    node: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    grace_seconds: float
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    restart_due: float | None = None
    """Set once the process was seen to exit on its own: when to start it again (backoff)."""
    kill_deadline: float | None = None
    """Set once SIGTERM was sent: when to send SIGKILL."""

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        log.info("started %s/%s on %s as pid %d", self.namespace, self.pod, self.node, self.popen.pid)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def send(self, signum: int) -> None:
        """Signal the whole process group (the command and anything it started)."""
        if self.popen is None or not self.alive():
            return
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL now and reap (a lost node: no chance to drain)."""
        self.send(signal.SIGKILL)
        if self.popen is not None:
            try:
                self.popen.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                log.warning("pid %d survived SIGKILL for 5 s", self.popen.pid)

    def terminate(self) -> None:
        """SIGTERM now; the bridge loop sends SIGKILL once the grace period has passed."""
        if self.kill_deadline is None:
            self.send(signal.SIGTERM)
            self.kill_deadline = time.monotonic() + self.grace_seconds


class KubeReader:
    """The few API calls the bridge makes, answered as plain JSON dicts (camelCase, like kubectl's)."""

    def __init__(self, kubeconfig: Path) -> None:
        self._client = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        self._core = k8s.CoreV1Api(self._client)

    def _plain(self, model: object) -> Any:
        return self._client.sanitize_for_serialization(model)

    def pods(self, label_selector: str) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._plain(self._core.list_pod_for_all_namespaces(
            label_selector=label_selector)).get("items") or [])

    def nodes(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._plain(self._core.list_node()).get("items") or [])

    def secret(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            found = self._plain(self._core.read_namespaced_secret(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {key: base64.b64decode(value).decode() for key, value in (found.get("data") or {}).items()}

    def config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            found = self._plain(self._core.read_namespaced_config_map(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(found.get("data") or {})

    def service_account_token(self, namespace: str, account: str, pod: dict[str, Any]) -> str:
        """A token for `account` with the API server's audiences, bound to `pod` (dies with the pod)."""
        request = k8s.AuthenticationV1TokenRequest(
            spec=k8s.V1TokenRequestSpec(
                audiences=[],
                expiration_seconds=TOKEN_SECONDS,
                bound_object_ref=k8s.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=pod["metadata"]["name"], uid=pod["metadata"]["uid"]
                ),
            )
        )
        answer = self._plain(self._core.create_namespaced_service_account_token(account, namespace, request))
        return str(answer["status"]["token"])


def _node_ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _heartbeat_after(node: dict[str, Any], moment: datetime) -> bool:
    """Whether the node's kubelet (kwok) reported Ready after `moment`: a lost node is back."""
    for condition in node.get("status", {}).get("conditions") or []:
        stamp = condition.get("lastHeartbeatTime")
        if condition.get("type") == "Ready" and condition.get("status") == "True" and stamp:
            return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")) > moment
    return False


class WorkerBridge:
    """A thread that keeps one local process per bridged pod, in step with the cluster."""

    def __init__(
        self,
        kubeconfig: Path,
        log_dir: Path,
        poll_interval: float = 0.5,
        worker_env: Callable[[dict[str, Any], dict[str, str]], dict[str, str]] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.poll_interval = poll_interval
        self.worker_env = worker_env
        """Optional: given a worker pod and its resolved environment, the environment to run it with
        (the chaos run points each pod's broker URL at a fault-proxy listener of its own)."""
        self._kube = KubeReader(kubeconfig)
        self._children: dict[str, BridgedProcess] = {}
        self._lost: dict[str, datetime] = {}
        """Nodes taken away by `node_lost`, and when: they still look Ready until the node lifecycle
        controller notices, and their pods still look Running, so nothing may start there meanwhile."""
        self._draining: list[BridgedProcess] = []
        self._skipped: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- public ------------------------------------------------------------------------------

    def start(self) -> WorkerBridge:
        self._thread = threading.Thread(target=self._run, name="taskq-worker-bridge", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching and kill every process the bridge started (SIGTERM, SIGKILL after 3 s)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        with self._lock:
            everyone = [*self._children.values(), *self._draining]
            stop_processes([c.popen for c in everyone if c.popen is not None], 3.0, group=True)
            self._children.clear()
            self._draining.clear()

    def processes(self) -> dict[str, int]:
        """`{pod name: pid}` of the live processes standing in for current pods."""
        with self._lock:
            return {
                child.pod: child.popen.pid
                for child in self._children.values()
                if child.popen is not None and child.alive()
            }

    def node_lost(self, node: str) -> list[int]:
        """SIGKILL every process of a pod on `node` now (a test took the node away); return their pids."""
        killed = []
        with self._lock:
            self._lost[node] = datetime.now(UTC)
            for uid, child in list(self._children.items()):
                if child.node == node:
                    if child.popen is not None and child.alive():
                        killed.append(child.popen.pid)
                    child.kill()
                    del self._children[uid]
        return killed

    def __enter__(self) -> WorkerBridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.sync_once()
            except ApiException as exc:
                log.warning("API error while syncing (HTTP %s); retrying", exc.status)
            except Exception:  # the loop must outlive any one bad round
                log.exception("bridge sync failed; retrying")
            self._stopping.wait(self.poll_interval)

    def sync_once(self) -> None:
        """One round: start, restart, terminate or kill processes to match the pods."""
        pods = self._kube.pods(POD_SELECTOR)
        nodes = self._kube.nodes()
        ready_kwok_nodes = {
            node["metadata"]["name"]
            for node in nodes
            if KWOK_NODE_ANNOTATION in (node["metadata"].get("annotations") or {}) and _node_ready(node)
        }
        now = time.monotonic()
        with self._lock:
            for node in nodes:
                name = node["metadata"]["name"]
                if name in self._lost and _heartbeat_after(node, self._lost[name]):
                    del self._lost[name]
            ready_kwok_nodes -= set(self._lost)
            seen: set[str] = set()
            for pod in pods:
                metadata = pod["metadata"]
                uid = metadata["uid"]
                seen.add(uid)
                child = self._children.get(uid)
                node_ok = pod["spec"].get("nodeName") in ready_kwok_nodes
                if child is not None and not node_ok:
                    log.info("node %s of %s/%s is lost: SIGKILL", child.node, child.namespace, child.pod)
                    child.kill()
                    del self._children[uid]
                elif metadata.get("deletionTimestamp"):
                    if child is not None:
                        grace = metadata.get("deletionGracePeriodSeconds")
                        self._retire(uid, None if grace is None else float(grace))
                elif pod.get("status", {}).get("phase") != "Running" or not node_ok:
                    continue
                elif child is None:
                    self._adopt_pod(pod, now)
                elif not child.alive():
                    self._restart_when_due(child, now)
            for uid in [uid for uid in self._children if uid not in seen]:
                child = self._children[uid]
                if child.node in ready_kwok_nodes:
                    self._retire(uid, None)
                else:
                    child.kill()
                    del self._children[uid]
            self._reap_draining(now)

    # --- helpers -----------------------------------------------------------------------------

    def _retire(self, uid: str, grace: float | None) -> None:
        child = self._children.pop(uid)
        if grace is not None:
            child.grace_seconds = grace
        log.info("pod %s/%s is gone: SIGTERM, %.0f s grace", child.namespace, child.pod, child.grace_seconds)
        child.terminate()
        self._draining.append(child)

    def _reap_draining(self, now: float) -> None:
        for child in list(self._draining):
            if not child.alive():
                self._draining.remove(child)
            elif child.kill_deadline is not None and now >= child.kill_deadline:
                log.info("%s/%s outlived its grace period: SIGKILL", child.namespace, child.pod)
                child.kill()
                self._draining.remove(child)

    def _restart_when_due(self, child: BridgedProcess, now: float) -> None:
        """Like a kubelet with restartPolicy Always: start an exited process again after a backoff."""
        if child.restart_due is None:
            code = child.popen.returncode if child.popen is not None else None
            child.restarts += 1
            delay = min(RESTART_BACKOFF_MAX, 2.0 ** min(child.restarts, 5))
            log.info("%s/%s exited (code %s): restart %d in %.0f s", child.namespace, child.pod, code,
                     child.restarts, delay)
            child.restart_due = now + delay
        elif now >= child.restart_due:
            child.restart_due = None
            child.start()

    def _adopt_pod(self, pod: dict[str, Any], now: float) -> None:
        uid = pod["metadata"]["uid"]
        if self._skipped.get(uid, 0.0) > now:
            return
        try:
            child = self._bridged_process(pod)
        except (PodEnvError, ApiException) as exc:
            reason = exc.reason if isinstance(exc, ApiException) else str(exc)
            log.warning("not bridging %s/%s: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], reason)
            self._skipped[uid] = now + 5.0
            return
        child.start()
        self._children[uid] = child

    def _bridged_process(self, pod: dict[str, Any]) -> BridgedProcess:
        metadata, spec = pod["metadata"], pod["spec"]
        app = (metadata.get("labels") or {}).get(NAME_LABEL, "")
        container = main_container(pod)
        env = {key: os.environ[key] for key in HOST_ENV_KEPT if key in os.environ}
        env["HOSTNAME"] = metadata["name"]
        env.update(container_env(pod, container, self._kube))
        env.update(ENV_OVERRIDES)
        if app == WORKER_APP and self.worker_env is not None:
            env = self.worker_env(pod, env)
        if app == OPERATOR_APP:
            env.pop("KUBERNETES_SERVICE_HOST", None)
            env["KUBECONFIG"] = str(self._operator_kubeconfig(pod))
        grace = spec.get("terminationGracePeriodSeconds")
        return BridgedProcess(
            namespace=metadata["namespace"],
            pod=metadata["name"],
            uid=metadata["uid"],
            node=spec["nodeName"],
            argv=local_argv(container, app, env),
            env=env,
            log_path=self.log_dir / f"{metadata['namespace']}_{metadata['name']}.log",
            grace_seconds=30.0 if grace is None else float(grace),
        )

    def _operator_kubeconfig(self, pod: dict[str, Any]) -> Path:
        """A kubeconfig for the pod's ServiceAccount: a token bound to the pod, the local server, our CA."""
        metadata = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        token = self._kube.service_account_token(metadata["namespace"], account, pod)
        admin = yaml.safe_load(self.kubeconfig.read_text())
        cluster = admin["clusters"][0]["cluster"]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"{metadata['namespace']}_{metadata['name']}.kubeconfig"
        return pki.write_kubeconfig(path, cluster["server"], Path(cluster["certificate-authority"]), token=token,
                                    user=account)
