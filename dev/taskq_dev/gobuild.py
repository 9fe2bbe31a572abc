"""Build Go main packages from pinned modules into the harness cache, once.

`go install module/cmd@version` does not work for every tool we need: k8s.io/kubernetes replaces its
staging modules with local paths, and the module proxy refuses the version list of some modules (which
`go install` reads to check for deprecation). So each build happens in a small wrapper module that
`require`s the pinned version (plus any `replace` lines) and runs `go build -mod=mod`.

Called by `taskq_dev.tools`; a build runs under a file lock so parallel test sessions share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class GoBuildError(RuntimeError):
    """A tool could not be built; the message says which and how to get it otherwise."""


@dataclass(frozen=True)
class GoTool:
    """One pinned module and the main packages to build from it."""

    module: str
    version: str
    packages: Sequence[str]
    replaces: dict[str, str] = field(default_factory=dict)
    go_directive: str = "1.24.0"
    ldflags: tuple[str, ...] = ()
    """Extra linker flags, e.g. `-X pkg.var=value` to stamp the version the binary reports."""

    def stamp(self) -> str:
        """What identifies a build of this tool (replaces follow from the version, so they are left out)."""
        key = json.dumps([self.module, self.version, list(self.packages), list(self.ldflags), self.go_directive])
        return hashlib.sha256(key.encode()).hexdigest()[:16]


STAMP_FILE = ".build-stamp"


def is_current(tool: GoTool, out_dir: Path, binaries: Sequence[str]) -> bool:
    """Whether `out_dir` holds every binary, built from exactly this tool description."""
    stamp = out_dir / STAMP_FILE
    return all((out_dir / name).exists() for name in binaries) and stamp.exists() and stamp.read_text().strip() == tool.stamp()


def go_binary() -> str:
    """The `go` command, or a clear error saying that the first build needs Go."""
    found = shutil.which("go")
    if found is None:
        raise GoBuildError(
            "Go is not on PATH: the first run builds the harness tools from their Go modules. "
            "Install Go (or point KUBEBUILDER_ASSETS / PATH at prebuilt binaries)."
        )
    return found


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive file lock shared by every process that builds into the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def download(module: str, version: str) -> dict[str, Any]:
    """`go mod download -json module@vversion`: where the module cache holds it (`Dir`, `GoMod`, ...)."""
    listing = subprocess.run(
        [go_binary(), "mod", "download", "-json", f"{module}@v{version}"],
        check=False,
        capture_output=True,
        text=True,
        cwd="/",
    )
    if listing.returncode != 0:
        tail = "\n".join(listing.stderr.strip().splitlines()[-5:])
        raise GoBuildError(f"downloading {module} v{version} failed:\n{tail}")
    found: dict[str, Any] = json.loads(listing.stdout)
    return found


def staging_replaces(kubernetes_version: str) -> dict[str, str]:
    """Map each `k8s.io/*` staging module of k8s.io/kubernetes to its published `v0.X.Y` version."""
    gomod = Path(download("k8s.io/kubernetes", kubernetes_version)["GoMod"]).read_text()
    staging_version = "v0." + kubernetes_version.split(".", 1)[1]
    modules = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", gomod, flags=re.MULTILINE)
    if not modules:
        raise GoBuildError(f"no staging modules found in k8s.io/kubernetes v{kubernetes_version}")
    return {module: f"{module} {staging_version}" for module in modules}


def _wrapper_gomod(tool: GoTool) -> str:
    lines = [
        "module taskq.local/toolbuild",
        "",
        f"go {tool.go_directive}",
        "",
        f"require {tool.module} v{tool.version}",
    ]
    if tool.replaces:
        lines += ["", "replace ("]
        lines += [f"\t{old} => {new}" for old, new in sorted(tool.replaces.items())]
        lines.append(")")
    return "\n".join(lines) + "\n"


def build(tool: GoTool, out_dir: Path, binaries: Sequence[str], *, lock: bool = True) -> dict[str, Path]:
    """Build `tool` into `out_dir` unless every name in `binaries` is already there.

    Returns the path of each binary. Prints progress to stderr, since a cold build takes minutes.
    `lock=False`: the caller holds `locked(out_dir / ".build.lock")` already (to rename a binary
    under the same lock, so that a parallel session never sees it half moved).
    """
    wanted = {name: out_dir / name for name in binaries}
    if is_current(tool, out_dir, binaries):
        return wanted
    with locked(out_dir / ".build.lock") if lock else contextlib.nullcontext():
        if is_current(tool, out_dir, binaries):
            return wanted
        src = out_dir / "src"
        src.mkdir(parents=True, exist_ok=True)
        (src / "go.mod").write_text(_wrapper_gomod(tool))
        env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0")
        started = time.monotonic()
        print(
            f"taskq-dev: building {', '.join(binaries)} from {tool.module} v{tool.version} (first run only; cached in {out_dir})",
            file=sys.stderr,
            flush=True,
        )
        result = subprocess.run(
            [
                go_binary(),
                "build",
                "-trimpath",
                "-ldflags=" + " ".join(["-s", "-w", *tool.ldflags]),
                "-o",
                str(out_dir) + "/",
                *tool.packages,
            ],
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-15:])
            raise GoBuildError(f"building {tool.module} v{tool.version} failed:\n{tail}")
        missing = [name for name, path in wanted.items() if not path.exists()]
        if missing:
            raise GoBuildError(f"build of {tool.module} produced no {', '.join(missing)}")
        (out_dir / STAMP_FILE).write_text(tool.stamp() + "\n")
        print(
            f"taskq-dev: built {', '.join(binaries)} in {time.monotonic() - started:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        return wanted
