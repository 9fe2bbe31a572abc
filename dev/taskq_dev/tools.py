"""Paths to the external binaries the harness runs, built once from pinned Go modules.

Each tool has its own function returning the path of a working binary (building it into the harness
cache on first use through `taskq_dev.gobuild`). Called by `taskq_dev.services` (FerretDB) and by the
local control plane (kube tools).
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

from taskq_dev import gobuild, paths, versions

FERRETDB_MODULE = "github.com/FerretDB/FerretDB"


def _binary_runs(binary: Path, *args: str) -> bool:
    """Whether `binary` exists and exits 0 for `args` (a cheap health check of a cached build)."""
    if not binary.exists():
        return False
    try:
        result = subprocess.run([str(binary), *args], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _ferretdb_source(out_dir: Path, version: str) -> Path:
    """A writable copy of FerretDB's module source with `build/version/version.txt` filled in.

    The published module lacks that generated file, and a binary built without it panics at start-up;
    the wrapper module `replace`s FerretDB with this copy.
    """
    source = out_dir / "module-src"
    version_file = source / "build" / "version" / "version.txt"
    if version_file.exists():
        return source
    listing = subprocess.run(
        [gobuild.go_binary(), "mod", "download", "-json", f"{FERRETDB_MODULE}@v{version}"],
        check=False,
        capture_output=True,
        text=True,
        cwd="/",
    )
    if listing.returncode != 0:
        tail = "\n".join(listing.stderr.strip().splitlines()[-5:])
        raise gobuild.GoBuildError(f"downloading {FERRETDB_MODULE} v{version} failed:\n{tail}")
    module_dir = Path(json.loads(listing.stdout)["Dir"])
    staging = out_dir / "module-src.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(module_dir, staging)
    for path in [staging, *staging.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    (staging / "build" / "version" / "version.txt").write_text(f"v{version}\n")
    (staging / "build" / "version" / "package.txt").write_text("taskq-dev\n")
    shutil.rmtree(source, ignore_errors=True)
    staging.rename(source)
    return source


def ferretdb_binary() -> Path:
    """The `ferretdb` binary at the pinned version, built on first use (a few minutes when cold)."""
    out_dir = paths.tool_dir("ferretdb", versions.FERRETDB)
    binary = out_dir / "ferretdb"
    if _binary_runs(binary, "--version"):
        return binary
    binary.unlink(missing_ok=True)  # a build from the bare module panics at start-up: rebuild it
    source = _ferretdb_source(out_dir, versions.FERRETDB)
    tool = gobuild.GoTool(
        module=FERRETDB_MODULE,
        version=versions.FERRETDB,
        packages=[f"{FERRETDB_MODULE}/cmd/ferretdb"],
        replaces={FERRETDB_MODULE: str(source)},
    )
    built = gobuild.build(tool, out_dir, ["ferretdb"])["ferretdb"]
    if not _binary_runs(built, "--version"):
        raise gobuild.GoBuildError(f"the FerretDB build at {built} does not start; delete it and retry")
    return built
