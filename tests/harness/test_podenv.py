"""How the worker bridge turns a pod into a local command and environment (taskq_dev.podenv)."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from taskq_dev.podenv import PodEnvError, console_command, container_env, expand_references, local_argv


class Objects:
    """Secrets and ConfigMaps held in memory, read through the same interface as the API reader."""

    def __init__(self, secrets: dict[str, dict[str, str]], config_maps: dict[str, dict[str, str]]) -> None:
        self.secrets = secrets
        self.config_maps = config_maps

    def secret(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.secrets.get(f"{namespace}/{name}")

    def config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.config_maps.get(f"{namespace}/{name}")


def pod(env: list[dict[str, Any]], env_from: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    container = {"name": "worker", "command": ["taskq-worker"], "env": env, "envFrom": env_from or []}
    return {
        "metadata": {"name": "w-1", "namespace": "ns", "uid": "u-1", "labels": {"app": "a"}},
        "spec": {"nodeName": "kwok-node-1", "containers": [container]},
        "status": {"podIP": "10.244.1.5"},
    }


OBJECTS = Objects({"ns/broker": {"amqp-url": "amqp://u:p@h/"}}, {"ns/settings": {"queue": "q1", "CONC": "8"}})


def test_values_from_secret_config_map_and_downward_api_are_resolved() -> None:
    body = pod([
        {"name": "TASKQ_AMQP_URL", "valueFrom": {"secretKeyRef": {"name": "broker", "key": "amqp-url"}}},
        {"name": "TASKQ_QUEUE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "queue"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "ID", "value": "$(POD_NAME)-on-$(NODE)-$$(KEPT)"},
    ], env_from=[{"configMapRef": {"name": "settings"}, "prefix": "X_"}])
    env = container_env(body, body["spec"]["containers"][0], OBJECTS)
    assert env["TASKQ_AMQP_URL"] == "amqp://u:p@h/"
    assert env["TASKQ_QUEUE"] == "q1"
    assert (env["POD_NAME"], env["NODE"], env["APP"]) == ("w-1", "kwok-node-1", "a")
    assert env["ID"] == "w-1-on-kwok-node-1-$(KEPT)"
    assert env["X_CONC"] == "8"


def test_missing_key_fails_unless_optional() -> None:
    missing = {"name": "V", "valueFrom": {"secretKeyRef": {"name": "broker", "key": "nope"}}}
    body = pod([missing])
    with pytest.raises(PodEnvError, match="nope"):
        container_env(body, body["spec"]["containers"][0], OBJECTS)
    missing["valueFrom"]["secretKeyRef"]["optional"] = True
    assert "V" not in container_env(body, body["spec"]["containers"][0], OBJECTS)
    absent = pod([{"name": "V", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}])
    with pytest.raises(PodEnvError, match="ConfigMap ns/gone not found"):
        container_env(absent, absent["spec"]["containers"][0], OBJECTS)


def test_commands_map_to_local_console_scripts_or_absolute_executables() -> None:
    assert local_argv({"command": ["taskq-worker"], "args": ["--x"]}, "taskq-worker", {}) == [
        *console_command("taskq-worker"), "--x"]
    assert local_argv({"command": [sys.executable, "-c", "$(CODE)"]}, "", {"CODE": "pass"}) == [
        sys.executable, "-c", "pass"]
    with pytest.raises(PodEnvError, match="neither"):
        local_argv({"command": ["taskq-operator"]}, "taskq-worker", {})
    with pytest.raises(PodEnvError, match="neither"):
        local_argv({"command": ["nginx"]}, "taskq-worker", {})
    with pytest.raises(PodEnvError, match="no explicit command"):
        local_argv({"args": ["serve"]}, "taskq-worker", {})


def test_double_dollar_escapes_a_reference() -> None:
    assert expand_references("$$(A)/$(A)/$(B)", {"A": "1"}) == "$(A)/1/$(B)"
