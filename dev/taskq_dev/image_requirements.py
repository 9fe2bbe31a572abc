"""The requirement list of the taskq image: taskq's base dependencies plus those of the image's extras.

One truth for two callers: the Dockerfile's `deps` stage runs this file as a script (it is copied
alone into the build, standard library only) to install the dependency venv before the sources
arrive, and `taskq_dev.docker` imports it to download the same wheels into the host-made wheelhouse.
Self-references such as `taskq[worker,api]` inside an extra are expanded, not installed.

    python3 image_requirements.py pyproject.toml worker,operator,api
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

IMAGE_EXTRAS = ("worker", "operator", "api")
"""What the image runs: `taskq-worker` (the default command), `taskq-operator` and `taskq-api`."""

_SELF_REFERENCE = re.compile(r"^\s*(?P<name>[A-Za-z0-9._-]+)\s*\[(?P<extras>[^\]]*)\]\s*$")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(project: Mapping[str, Any], extras: Iterable[str]) -> list[str]:
    """Base dependencies, then each extra's, in order, without duplicates; `taskq[...]` items expanded."""
    own_name = _canonical(str(project["name"]))
    optional: Mapping[str, Sequence[str]] = project.get("optional-dependencies", {})
    found: list[str] = []
    visited: set[str] = set()

    def add(items: Iterable[str]) -> None:
        for item in items:
            match = _SELF_REFERENCE.match(item)
            if match and _canonical(match["name"]) == own_name:
                expand(extra.strip() for extra in match["extras"].split(","))
            elif item not in found:
                found.append(item)

    def expand(names: Iterable[str]) -> None:
        for name in names:
            if name in visited:
                continue
            if name not in optional:
                raise KeyError(f"{project['name']} has no extra {name!r} (known: {', '.join(sorted(optional))})")
            visited.add(name)
            add(optional[name])

    add(project.get("dependencies", []))
    expand(extras)
    return found


def image_requirements(pyproject: Path, extras: Iterable[str] = IMAGE_EXTRAS) -> list[str]:
    """`requirements` of the `[project]` table in `pyproject`."""
    return requirements(tomllib.loads(pyproject.read_text())["project"], extras)


def main(argv: Sequence[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: image_requirements.py PYPROJECT [EXTRA,EXTRA...]", file=sys.stderr)
        return 2
    extras = argv[1].split(",") if len(argv) == 2 and argv[1] else list(IMAGE_EXTRAS)
    print(*image_requirements(Path(argv[0]), extras), sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
