"""What a kubelet would run for a pod, translated for this machine: the command line and environment.

Pods are plain JSON dicts as the API returns them. Environment values from Secrets, ConfigMaps and
the downward API are resolved; `$(VAR)` references are expanded; the `taskq-worker` and
`taskq-operator` commands map to this machine's console scripts. Called by `taskq_dev.bridge`.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

WORKER_APP = "taskq-worker"
OPERATOR_APP = "taskq-operator"
CONSOLE_SCRIPTS = {WORKER_APP: "taskq.worker.main", OPERATOR_APP: "taskq_operator.main"}
"""Container commands mapped to this machine's console scripts (module for `python -m` as fallback)."""
_VAR_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class PodEnvError(RuntimeError):
    """A pod cannot run here (no usable command, a missing Secret key, ...); the message says why."""


class ObjectReader(Protocol):
    """Reads the data of Secrets and ConfigMaps (decoded), or None when the object does not exist."""

    def secret(self, namespace: str, name: str) -> dict[str, str] | None: ...

    def config_map(self, namespace: str, name: str) -> dict[str, str] | None: ...


def main_container(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The container named `worker`, else the first one."""
    containers: list[dict[str, Any]] = pod["spec"]["containers"]
    return next((c for c in containers if c.get("name") == "worker"), containers[0])


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$(VAR)` stays literal."""
    pieces = text.split("$$")
    return "$".join(_VAR_REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)), piece) for piece in pieces)


def console_command(name: str) -> list[str]:
    """This machine's entry point for a taskq console script: next to our Python, on PATH, or `-m`."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return [str(beside_python)]
    on_path = shutil.which(name)
    if on_path is not None:
        return [on_path]
    return [sys.executable, "-m", CONSOLE_SCRIPTS[name]]


def local_argv(container: Mapping[str, Any], app: str, env: Mapping[str, str]) -> list[str]:
    """The local command line for the container's `command` + `args`.

    `taskq-worker` (and `taskq-operator` for a pod labelled as the operator) run this machine's console
    script; any other command runs only if it is an absolute path to a local executable.
    """
    command = [expand_references(part, env) for part in container.get("command") or []]
    args = [expand_references(part, env) for part in container.get("args") or []]
    if not command:
        raise PodEnvError("the container has no explicit command (an image entrypoint cannot run locally)")
    head, rest = command[0], command[1:] + args
    if head == WORKER_APP or (head == OPERATOR_APP and app == OPERATOR_APP):
        return console_command(head) + rest
    if os.path.isabs(head) and os.path.isfile(head) and os.access(head, os.X_OK):
        return [head, *rest]
    raise PodEnvError(f"command {head!r} is neither a taskq console script nor a local executable")


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A downward-API `fieldRef` value."""
    metadata, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    values = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }
    if path in values:
        return str(values[path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    raise PodEnvError(f"fieldRef {path!r} is not supported")


def _source_data(reader: ObjectReader, kind: str, namespace: str, ref: Mapping[str, Any]) -> dict[str, str]:
    name = ref["name"]
    data = reader.secret(namespace, name) if kind == "Secret" else reader.config_map(namespace, name)
    if data is None:
        if ref.get("optional"):
            return {}
        raise PodEnvError(f"{kind} {namespace}/{name} not found")
    return data


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], reader: ObjectReader) -> dict[str, str]:
    """The container's environment: `envFrom` first, then `env` in order (later entries win)."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "secretRef" in source:
            data = _source_data(reader, "Secret", namespace, source["secretRef"])
        elif "configMapRef" in source:
            data = _source_data(reader, "ConfigMap", namespace, source["configMapRef"])
        else:
            continue
        env.update({prefix + key: value for key, value in data.items()})
    for variable in container.get("env") or []:
        name = variable["name"]
        source = variable.get("valueFrom")
        if source is None:
            env[name] = expand_references(variable.get("value", ""), env)
            continue
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
            continue
        if "secretKeyRef" in source:
            ref, kind = source["secretKeyRef"], "Secret"
        elif "configMapKeyRef" in source:
            ref, kind = source["configMapKeyRef"], "ConfigMap"
        else:
            raise PodEnvError(f"env {name}: only secretKeyRef, configMapKeyRef and fieldRef are supported")
        data = _source_data(reader, kind, namespace, ref)
        if ref["key"] in data:
            env[name] = data[ref["key"]]
        elif not ref.get("optional"):
            raise PodEnvError(f"env {name}: key {ref['key']!r} not in {kind} {namespace}/{ref['name']}")
    return env
