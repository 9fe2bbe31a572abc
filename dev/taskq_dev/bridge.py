"""The worker bridge: real local processes for the taskq pods that kwok "runs" on simulated nodes.

kwok nodes run no containers. For every pod labelled `app.kubernetes.io/name=taskq-worker` (or
`taskq-operator`) that is Running on a Ready kwok node, the bridge starts the pod's command on this
machine with the pod's environment (`valueFrom` and `envFrom` resolved from Secrets, ConfigMaps and the
downward API). It stops the process the way a kubelet would: SIGTERM and the pod's grace period when
the pod goes away normally, SIGKILL at once when the pod's node is lost. An operator pod gets a
kubeconfig with a token minted for its ServiceAccount (TokenRequest API), so it runs with the chart's
RBAC. Called by the pytest `bridge` fixture and `taskq-dev bridge run`.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from taskq_dev import pki
from taskq_dev.kwok import KWOK_NODE_ANNOTATION

log = logging.getLogger("taskq_dev.bridge")

NAME_LABEL = "app.kubernetes.io/name"
WORKER_APP = "taskq-worker"
OPERATOR_APP = "taskq-operator"
POD_SELECTOR = f"{NAME_LABEL} in ({WORKER_APP},{OPERATOR_APP})"
CONSOLE_SCRIPTS = {WORKER_APP: "taskq.worker.main", OPERATOR_APP: "taskq_operator.main"}
"""Container commands the bridge maps to this machine's console scripts (module for `python -m`)."""
HOST_ENV_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "TASKQ_CACHE_DIR")
"""Host variables a local process needs to run at all; everything else comes from the pod."""
ENV_OVERRIDES = {"TASKQ_HEALTH_PORT": "0"}
"""Forced on every bridged process: many pods share this machine's ports."""
RESTART_BACKOFF_MAX = 30.0
TOKEN_SECONDS = 24 * 3600
_VAR_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class BridgeError(RuntimeError):
    """A pod cannot be bridged (unknown command, missing Secret key, ...); the pod is skipped."""


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


def _console_command(name: str) -> list[str]:
    """This machine's entry point for a taskq console script: next to our Python, on PATH, or `-m`."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return [str(beside_python)]
    on_path = shutil.which(name)
    if on_path is not None:
        return [on_path]
    return [sys.executable, "-m", CONSOLE_SCRIPTS[name]]


def expand_references(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$(VAR)` stays literal."""
    pieces = text.split("$$")
    return "$".join(_VAR_REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)), piece) for piece in pieces)


def local_argv(container: k8s.V1Container, app: str, env: dict[str, str]) -> list[str]:
    """The local command line for a container's `command` + `args`, or BridgeError if it has none here."""
    command = [expand_references(part, env) for part in (container.command or [])]
    args = [expand_references(part, env) for part in (container.args or [])]
    if not command:
        raise BridgeError("the container has no explicit command (an image entrypoint cannot run locally)")
    head, rest = command[0], command[1:] + args
    if head == WORKER_APP or (head == OPERATOR_APP and app == OPERATOR_APP):
        return _console_command(head) + rest
    if os.path.isabs(head) and os.path.isfile(head) and os.access(head, os.X_OK):
        return [head, *rest]
    raise BridgeError(f"command {head!r} is neither a taskq console script nor a local executable")


class WorkerBridge:
    """A thread that keeps one local process per bridged pod, in step with the cluster."""

    def __init__(self, kubeconfig: Path, log_dir: Path, poll_interval: float = 0.5) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.poll_interval = poll_interval
        self._api = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(kubeconfig)))
        self._children: dict[str, BridgedProcess] = {}
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
        """Stop watching and kill every process the bridge started."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        with self._lock:
            for child in [*self._children.values(), *self._draining]:
                child.send(signal.SIGTERM)
            deadline = time.monotonic() + 3.0
            for child in [*self._children.values(), *self._draining]:
                while child.alive() and time.monotonic() < deadline:
                    time.sleep(0.05)
                child.kill()
            self._children.clear()
            self._draining.clear()

    def processes(self) -> dict[str, int]:
        """`{pod name: pid}` of the live processes standing in for current pods."""
        with self._lock:
            return {
                child.pod: child.popen.pid
                for child in self._children.values()
                if child.popen is not None and child.alive() and child.kill_deadline is None
            }

    def node_lost(self, node: str) -> list[int]:
        """SIGKILL every process of a pod on `node` now (called when a test takes the node away)."""
        killed = []
        with self._lock:
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
        pods = self._api.list_pod_for_all_namespaces(label_selector=POD_SELECTOR).items
        ready_kwok_nodes = self._ready_kwok_nodes()
        now = time.monotonic()
        with self._lock:
            seen: set[str] = set()
            for pod in pods:
                uid = pod.metadata.uid
                seen.add(uid)
                child = self._children.get(uid)
                node = pod.spec.node_name
                node_ok = node in ready_kwok_nodes
                if child is not None and not node_ok:
                    log.info("node %s of %s/%s is lost: SIGKILL", node, child.namespace, child.pod)
                    child.kill()
                    del self._children[uid]
                    continue
                if pod.metadata.deletion_timestamp is not None:
                    if child is not None:
                        grace = pod.metadata.deletion_grace_period_seconds
                        self._retire(uid, None if grace is None else float(grace))
                    continue
                if pod.status.phase != "Running" or not node_ok:
                    continue
                if child is None:
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

    def _ready_kwok_nodes(self) -> set[str]:
        ready = set()
        for node in self._api.list_node().items:
            if KWOK_NODE_ANNOTATION not in (node.metadata.annotations or {}):
                continue
            for condition in node.status.conditions or []:
                if condition.type == "Ready" and condition.status == "True":
                    ready.add(node.metadata.name)
        return ready

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

    def _adopt_pod(self, pod: k8s.V1Pod, now: float) -> None:
        uid = pod.metadata.uid
        if self._skipped.get(uid, 0.0) > now:
            return
        name, namespace = pod.metadata.name, pod.metadata.namespace
        try:
            child = self._bridged_process(pod)
        except (BridgeError, ApiException) as exc:
            reason = exc.reason if isinstance(exc, ApiException) else str(exc)
            log.warning("not bridging %s/%s: %s", namespace, name, reason)
            self._skipped[uid] = now + 5.0
            return
        child.start()
        self._children[uid] = child

    def _bridged_process(self, pod: k8s.V1Pod) -> BridgedProcess:
        labels = pod.metadata.labels or {}
        app = labels.get(NAME_LABEL, "")
        containers = pod.spec.containers
        container = next((c for c in containers if c.name == "worker"), containers[0])
        env = {key: os.environ[key] for key in HOST_ENV_KEPT if key in os.environ}
        env["HOSTNAME"] = pod.metadata.name
        env.update(self._container_env(pod, container))
        env.update(ENV_OVERRIDES)
        if app == OPERATOR_APP:
            env.pop("KUBERNETES_SERVICE_HOST", None)
            env["KUBECONFIG"] = str(self._operator_kubeconfig(pod))
        argv = local_argv(container, app, env)
        grace = pod.spec.termination_grace_period_seconds
        return BridgedProcess(
            namespace=pod.metadata.namespace,
            pod=pod.metadata.name,
            uid=pod.metadata.uid,
            node=pod.spec.node_name,
            argv=argv,
            env=env,
            log_path=self.log_dir / f"{pod.metadata.namespace}_{pod.metadata.name}.log",
            grace_seconds=30.0 if grace is None else float(grace),
        )

    def _container_env(self, pod: k8s.V1Pod, container: k8s.V1Container) -> dict[str, str]:
        namespace = pod.metadata.namespace
        env: dict[str, str] = {}
        for source in container.env_from or []:
            prefix = source.prefix or ""
            if source.secret_ref is not None:
                data = self._secret(namespace, source.secret_ref.name, source.secret_ref.optional)
            elif source.config_map_ref is not None:
                data = self._config_map(namespace, source.config_map_ref.name, source.config_map_ref.optional)
            else:
                continue
            env.update({prefix + key: value for key, value in data.items()})
        for variable in container.env or []:
            if variable.value_from is None:
                env[variable.name] = expand_references(variable.value or "", env)
                continue
            value = self._resolve(pod, variable.name, variable.value_from)
            if value is not None:
                env[variable.name] = value
        return env

    def _resolve(self, pod: k8s.V1Pod, name: str, source: k8s.V1EnvVarSource) -> str | None:
        namespace = pod.metadata.namespace
        if source.secret_key_ref is not None:
            ref = source.secret_key_ref
            return self._key(self._secret(namespace, ref.name, ref.optional), ref.key, ref.optional, name)
        if source.config_map_key_ref is not None:
            ref = source.config_map_key_ref
            return self._key(self._config_map(namespace, ref.name, ref.optional), ref.key, ref.optional, name)
        if source.field_ref is not None:
            return _field_value(pod, source.field_ref.field_path)
        raise BridgeError(f"env {name}: only secretKeyRef, configMapKeyRef and fieldRef are bridged")

    @staticmethod
    def _key(data: dict[str, str], key: str, optional: bool | None, variable: str) -> str | None:
        if key in data:
            return data[key]
        if optional:
            return None
        raise BridgeError(f"env {variable}: key {key!r} not found")

    def _secret(self, namespace: str, name: str, optional: bool | None) -> dict[str, str]:
        try:
            secret = self._api.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            if exc.status == 404:
                raise BridgeError(f"Secret {namespace}/{name} not found") from None
            raise
        decoded = {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}
        decoded.update(secret.string_data or {})
        return decoded

    def _config_map(self, namespace: str, name: str, optional: bool | None) -> dict[str, str]:
        try:
            config_map = self._api.read_namespaced_config_map(name, namespace)
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            if exc.status == 404:
                raise BridgeError(f"ConfigMap {namespace}/{name} not found") from None
            raise
        return dict(config_map.data or {})

    def _operator_kubeconfig(self, pod: k8s.V1Pod) -> Path:
        """A kubeconfig for the pod's ServiceAccount: a token bound to the pod, the local server, our CA."""
        account = pod.spec.service_account_name or "default"
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": TOKEN_SECONDS,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name, "uid": pod.metadata.uid},
            },
        }
        answer = self._api.create_namespaced_service_account_token(account, pod.metadata.namespace, request)
        admin = yaml.safe_load(self.kubeconfig.read_text())
        cluster = admin["clusters"][0]["cluster"]
        path = self.log_dir / f"{pod.metadata.namespace}_{pod.metadata.name}.kubeconfig"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return pki.write_kubeconfig(
            path, cluster["server"], Path(cluster["certificate-authority"]), token=answer.status.token, user=account
        )


def _field_value(pod: k8s.V1Pod, path: str) -> str:
    """The downward-API fields a taskq pod uses."""
    values: dict[str, Any] = {
        "metadata.name": pod.metadata.name,
        "metadata.namespace": pod.metadata.namespace,
        "metadata.uid": pod.metadata.uid,
        "spec.nodeName": pod.spec.node_name,
        "spec.serviceAccountName": pod.spec.service_account_name,
        "status.podIP": pod.status.pod_ip,
        "status.hostIP": pod.status.host_ip,
    }
    if path in values:
        return str(values[path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        mapping = (pod.metadata.labels if match.group(1) == "labels" else pod.metadata.annotations) or {}
        return str(mapping.get(match.group(2), ""))
    raise BridgeError(f"fieldRef {path!r} is not bridged")

