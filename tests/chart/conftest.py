"""Fixtures for the chart tests: the pinned helm binary and a `render` helper around `helm template`."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskq_dev import tools, versions

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "taskq"


@dataclass(frozen=True)
class Rendered:
    """The outcome of one `helm template`: exit code, the objects, and stderr for error checks."""

    returncode: int
    objects: list[dict[str, Any]]
    stderr: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj.get("kind") == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
        return found[0]


@pytest.fixture(scope="session")
def helm_bin() -> str:
    """helm from the harness (a recent one on PATH, or the pinned build in the cache)."""
    return str(tools.helm_binary())


@pytest.fixture(scope="session")
def render(helm_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Rendered]:
    """`render(values={...}, files=[...], args=[...])` runs `helm template` on charts/taskq."""
    folder = tmp_path_factory.mktemp("values")
    counter = iter(range(1_000_000))

    def _render(values: dict[str, Any] | None = None, files: Sequence[Path] = (), args: Sequence[str] = ()) -> Rendered:
        command = [helm_bin, "template", "taskq", str(CHART), "--namespace", "taskq-system",
                   "--kube-version", versions.KUBERNETES, *args]
        for path in files:
            command += ["--values", str(path)]
        if values is not None:
            path = folder / f"values-{next(counter)}.yaml"
            path.write_text(yaml.safe_dump(values))
            command += ["--values", str(path)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc] if result.returncode == 0 else []
        return Rendered(result.returncode, objects, result.stderr)

    return _render
