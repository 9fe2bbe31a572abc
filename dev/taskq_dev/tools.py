"""Paths to the external binaries the harness runs, built once from pinned Go modules.

Each tool has its own function returning the path of a working binary (building it into the harness
cache on first use through `taskq_dev.gobuild`). Called by `taskq_dev.services` (FerretDB) and by the
local control plane (kube tools).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import stat
import subprocess
import sys
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
    module_dir = Path(gobuild.download(FERRETDB_MODULE, version)["Dir"])
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


# --- toxiproxy, the fault proxy of the chaos tests (used by taskq_dev.faultproxy) ---------------

TOXIPROXY_MODULE = "github.com/Shopify/toxiproxy/v2"
TOXIPROXY_BINARIES = {"toxiproxy-server": "server", "toxiproxy-cli": "cli"}
"""Installed name -> the name `go build` gives the module's `cmd/<dir>` main."""


def toxiproxy_binaries() -> dict[str, Path]:
    """`toxiproxy-server` and `toxiproxy-cli` at the pinned version, built on first use (~1 min cold)."""
    out_dir = paths.tool_dir("toxiproxy", versions.TOXIPROXY)
    installed = {name: out_dir / name for name in TOXIPROXY_BINARIES}
    if all(_binary_runs(path, "--version") for path in installed.values()):
        return installed
    tool = gobuild.GoTool(
        module=TOXIPROXY_MODULE,
        version=versions.TOXIPROXY,
        packages=[f"{TOXIPROXY_MODULE}/cmd/{main}" for main in TOXIPROXY_BINARIES.values()],
        ldflags=(f"-X {TOXIPROXY_MODULE}.Version={versions.TOXIPROXY}",),
    )
    built = gobuild.build(tool, out_dir / "build", list(TOXIPROXY_BINARIES.values()))
    for name, main in TOXIPROXY_BINARIES.items():
        shutil.copy2(built[main], installed[name])
        if not _binary_runs(installed[name], "--version"):
            raise gobuild.GoBuildError(f"the toxiproxy build at {installed[name]} does not start; delete it and retry")
    return installed


# --- Kubernetes control plane, etcd, kwok, helm (used by taskq_dev.cluster) ---------------------

KUBERNETES_MODULE = "k8s.io/kubernetes"
KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ETCD_MODULE = "go.etcd.io/etcd/server/v3"
KWOK_PACKAGE = "sigs.k8s.io/kwok/cmd/kwok"
HELM_PACKAGE = "helm.sh/helm/v3/cmd/helm"

_KUBE_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)")
_PLAIN_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def _pinned_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


MIN_KUBE_VERSION = (_pinned_minor(versions.KUBERNETES)[0], _pinned_minor(versions.KUBERNETES)[1] - 1)
"""Kube binaries found on PATH must be at least this (one minor behind the pinned version)."""
MIN_ETCD_VERSION = (3, 5)
"""Debian's etcd 3.4 is refused: kube-apiserver 1.34 is tested against etcd 3.5 and 3.6."""
MIN_KWOK_VERSION = (0, 6)
MIN_HELM_VERSION = (3, 14)


def reported_version(binary: Path, args: tuple[str, ...], pattern: re.Pattern[str]) -> tuple[int, int] | None:
    """`(major, minor)` that `binary args` prints, or None if it does not run or prints none.

    A development build that reports `v0.0.0` counts as unknown.
    """
    try:
        result = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = pattern.search(result.stdout + result.stderr)
    if result.returncode != 0 or match is None:
        return None
    found = (int(match.group(1)), int(match.group(2)))
    return None if found == (0, 0) else found


def _from_environment(
    name: str, version_args: tuple[str, ...], pattern: re.Pattern[str], minimum: tuple[int, int]
) -> Path | None:
    """`$KUBEBUILDER_ASSETS/name` when present (taken as is, the envtest convention), else `name` on
    PATH when its version is at least `minimum` (too-old system packages are skipped)."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and (Path(assets) / name).is_file():
        return Path(assets) / name
    on_path = shutil.which(name)
    if on_path is None:
        return None
    found = reported_version(Path(on_path), version_args, pattern)
    if found is not None and found >= minimum:
        return Path(on_path)
    return None


def _kube_version_ldflags() -> tuple[str, ...]:
    """Without these the binaries report v0.0.0-master, and kubeVersion checks (Helm charts) fail."""
    major, minor = versions.KUBERNETES.split(".")[:2]
    return tuple(
        f"-X {pkg}.{var}={value}"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for var, value in (
            ("gitVersion", f"v{versions.KUBERNETES}"),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
        )
    )


def _kubernetes_module_build(cache_name: str, binaries: tuple[str, ...]) -> dict[str, Path]:
    """`binaries` (cmd/<name> mains) from the pinned k8s.io/kubernetes (staging modules pinned to
    v0.X.Y), cached in their own tool folder with their own build stamp."""
    out_dir = paths.tool_dir(cache_name, versions.KUBERNETES)
    tool = gobuild.GoTool(
        module=KUBERNETES_MODULE,
        version=versions.KUBERNETES,
        packages=[f"{KUBERNETES_MODULE}/cmd/{name}" for name in binaries],
        ldflags=_kube_version_ldflags(),
    )
    if gobuild.is_current(tool, out_dir, binaries):
        return {name: out_dir / name for name in binaries}
    tool = dataclasses.replace(tool, replaces=gobuild.staging_replaces(versions.KUBERNETES))
    return gobuild.build(tool, out_dir, binaries)


def _kubernetes_build() -> dict[str, Path]:
    """All four control-plane and client binaries."""
    return _kubernetes_module_build("kubernetes", KUBE_BINARIES)


def kubelet_binary() -> Path:
    """The kubelet for the harness's real nodes, from the same k8s.io/kubernetes module as the other
    kube binaries but its own build and cache folder (`tools/kubelet`), so building it never
    invalidates theirs. Static (CGO off): it runs inside the Debian trixie node containers."""
    return _kubernetes_module_build("kubelet", ("kubelet",))["kubelet"]


def kube_binary(name: str) -> Path:
    """kube-apiserver, kube-controller-manager, kube-scheduler or kubectl: from KUBEBUILDER_ASSETS, a
    recent enough one on PATH, or the pinned build in the cache (built on first use, ~20 min on 2 cores)."""
    if name not in KUBE_BINARIES:
        raise ValueError(f"not a kube binary: {name}")
    version_args = ("version", "--client") if name == "kubectl" else ("--version",)
    found = _from_environment(name, version_args, _KUBE_VERSION, MIN_KUBE_VERSION)
    return found if found is not None else _kubernetes_build()[name]


def etcd_binary() -> Path:
    """etcd: from KUBEBUILDER_ASSETS, PATH (3.5 or newer), or built from its Go module (the version
    k8s.io/kubernetes requires) into the cache."""
    found = _from_environment("etcd", ("--version",), _PLAIN_VERSION, MIN_ETCD_VERSION)
    if found is not None:
        return found
    out_dir = paths.tool_dir("etcd", versions.ETCD)
    binary = out_dir / "etcd"
    if binary.exists():
        return binary
    tool = gobuild.GoTool(module=ETCD_MODULE, version=versions.ETCD, packages=[ETCD_MODULE])
    with gobuild.locked(out_dir / ".build.lock"):  # parallel sessions: one builds, the others wait and find it
        if binary.exists():
            return binary
        built = gobuild.build(tool, out_dir, ["server"], lock=False)["server"]  # go names a `.../v3` main after its parent
        built.rename(binary)
    return binary


def _go_install(package: str, version: str, name: str) -> Path:
    """`go install package@version` into the tool's cache folder; when the module proxy refuses that
    (some modules' version lists are refused), a wrapper-module build of the same package."""
    out_dir = paths.tool_dir(name, version)
    binary = out_dir / name
    if binary.exists():
        return binary
    with gobuild.locked(out_dir / ".build.lock"):  # parallel sessions: one installs, the others wait and find it
        if binary.exists():
            return binary
        env = dict(os.environ, GOBIN=str(out_dir), CGO_ENABLED="0")
        print(f"taskq-dev: go install {package}@v{version} (first run only)", file=sys.stderr, flush=True)
        result = subprocess.run(
            [gobuild.go_binary(), "install", "-trimpath", "-ldflags=-s -w", f"{package}@v{version}"],
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
        )
        if result.returncode == 0 and binary.exists():
            return binary
        module = package.split("/cmd/")[0]
        tool = gobuild.GoTool(module=module, version=version, packages=[package])
        return gobuild.build(tool, out_dir, [name], lock=False)[name]


def kwok_binary() -> Path:
    """kwok (simulated kubelets): KUBEBUILDER_ASSETS, PATH (0.6 or newer), or the pinned build."""
    found = _from_environment("kwok", ("--version",), _KUBE_VERSION, MIN_KWOK_VERSION)
    return found if found is not None else _go_install(KWOK_PACKAGE, versions.KWOK, "kwok")


def helm_binary() -> Path:
    """helm 3: PATH (3.14 or newer) or the pinned build."""
    found = _from_environment("helm", ("version", "--short"), re.compile(r"v(\d+)\.(\d+)"), MIN_HELM_VERSION)
    return found if found is not None else _go_install(HELM_PACKAGE, versions.HELM, "helm")


def all_cluster_tools() -> dict[str, Path]:
    """Resolve (building what is missing, one after the other) every binary the local cluster runs."""
    resolved = {name: kube_binary(name) for name in KUBE_BINARIES}
    resolved["etcd"] = etcd_binary()
    resolved["kwok"] = kwok_binary()
    resolved["helm"] = helm_binary()
    return resolved
