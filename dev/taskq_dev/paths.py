"""Where the harness keeps builds and run state: outside the checkout, so fresh clones reuse them.

`TASKQ_CACHE_DIR` overrides the default `~/.cache/taskq`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The root of the harness cache (created on first use)."""
    root = Path(os.environ.get("TASKQ_CACHE_DIR") or Path.home() / ".cache" / "taskq")
    root.mkdir(parents=True, exist_ok=True)
    return root


def tool_dir(name: str, version: str) -> Path:
    """The folder that holds the binaries of one tool at one version."""
    path = cache_dir() / "tools" / name / f"v{version}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_dir(name: str) -> Path:
    """A folder for the run state of one long-lived harness component (cluster, services)."""
    path = cache_dir() / "state" / name
    path.mkdir(parents=True, exist_ok=True)
    return path
