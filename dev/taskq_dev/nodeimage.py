"""The images a real node needs, made on this machine without a registry: the node image itself,
the pod sandbox ("pause") image, and archives of images for each node's containerd to import.

- The node image (`local/taskq-node:<stamp>`): Debian trixie minbase with containerd 1.7, runc, the
  CNI plugins, iptables and iproute2 (debootstrap of this machine's Debian mirror), plus the node's
  entrypoint and containerd config from `node_files/`. The kubelet is not baked in: each node
  bind-mounts the cached build. The root filesystem tarball is kept in the cache, so a wiped Docker
  engine re-imports it in seconds instead of running debootstrap again.
- The pause image (`local/taskq-pause:1`): one static Go binary (`node_files/pause`), built with the Go
  toolchain into the tool cache.
- `image_archive(tag)`: `docker save` of a local image, cached per image id, for `ctr images import`.

Called by `taskq_dev.realnodes` and `taskq-dev cluster up --real-nodes`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from taskq_dev import docker, gobuild, paths

NODE_SUITE = "trixie"
NODE_PACKAGES = (
    "containerd", "runc", "containernetworking-plugins", "iptables", "iproute2", "ca-certificates", "procps",
)
"""trixie: containerd 1.7.24, runc 1.1.15, CNI plugins 1.1.1 (bookworm's containerd 1.6 is older)."""

NODE_IMAGE_REPOSITORY = "local/taskq-node"
PAUSE_IMAGE = "local/taskq-pause:1"
PAUSE_IMAGE_IN_CONTAINERD = "docker.io/local/taskq-pause:1"
"""How containerd names the pause image after import; `node_files/containerd.toml` points at it."""

FILES = Path(__file__).resolve().parent / "node_files"
ENTRYPOINT = "/usr/local/bin/taskq-node-entrypoint"
STAMP_FILE = ".build-stamp"


def images_dir() -> Path:
    """Where image tarballs (node root filesystem, archives for containerd) are cached."""
    path = paths.cache_dir() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _log(message: str) -> None:
    print(f"taskq-dev: {message}", file=sys.stderr, flush=True)


def _packages_stamp() -> str:
    """What identifies the node root filesystem: the suite and the package list."""
    return hashlib.sha256(f"{NODE_SUITE}\n{' '.join(NODE_PACKAGES)}\n".encode()).hexdigest()[:12]


def node_image_stamp() -> str:
    """What identifies a node image: its root filesystem and the files layered onto it."""
    digest = hashlib.sha256(_packages_stamp().encode())
    for name in ("entrypoint.sh", "containerd.toml"):
        digest.update((FILES / name).read_bytes())
    digest.update(_NODE_DOCKERFILE.encode())
    return digest.hexdigest()[:12]


def node_image_tag() -> str:
    return f"{NODE_IMAGE_REPOSITORY}:{node_image_stamp()}"


_NODE_DOCKERFILE = f"""\
ARG BASE
FROM $BASE
COPY containerd.toml /etc/containerd/config.toml
COPY entrypoint.sh {ENTRYPOINT}
RUN chmod 0755 {ENTRYPOINT} && mkdir -p /etc/kubernetes /var/lib/kubelet /var/lib/containerd /images /var/log/taskq
STOPSIGNAL SIGTERM
ENTRYPOINT ["{ENTRYPOINT}"]
"""


def _docker(*args: str, timeout: float = 600, stdin: Path | None = None, text: str | None = None) -> str:
    with open(stdin, "rb") if stdin is not None else open(os.devnull, "rb") as source:
        result = subprocess.run(
            [docker.docker_binary(), *args], check=False,
            stdin=None if text is not None else source, input=text.encode() if text is not None else None,
            capture_output=True, timeout=timeout, env=dict(os.environ, DOCKER_BUILDKIT="0"),
        )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace")
        raise docker.DockerError(f"docker {' '.join(args[:2])} failed: {output[-2000:]}")
    return result.stdout.decode(errors="replace").strip()


def _debootstrap_rootfs(rootfs: Path) -> None:
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise docker.DockerError("debootstrap is not installed (apt-get install debootstrap)")
    # The host is bookworm; its Debian mirror serves trixie under the same address.
    mirror = docker.debian_mirror(docker.DEBIAN_SUITE)
    result = subprocess.run(
        [debootstrap, "--variant=minbase", f"--include={','.join(NODE_PACKAGES)}", NODE_SUITE, str(rootfs), mirror],
        check=False, capture_output=True, text=True, timeout=1200,
    )
    if result.returncode != 0:
        raise docker.DockerError(f"debootstrap {NODE_SUITE} failed:\n{(result.stdout + result.stderr)[-3000:]}")


def _node_rootfs_tarball() -> Path:
    """The node's root filesystem as a tarball in the cache (debootstrap on first use, ~1-2 min)."""
    tarball = images_dir() / f"taskq-node-rootfs-{_packages_stamp()}.tar"
    if tarball.exists():
        return tarball
    rootfs = paths.state_dir("docker") / f"node-rootfs-{os.getpid()}"
    shutil.rmtree(rootfs, ignore_errors=True)
    started = time.monotonic()
    _log(f"making the node root filesystem (debootstrap {NODE_SUITE}: {', '.join(NODE_PACKAGES)}; first run only)")
    partial = tarball.with_suffix(".partial")
    try:
        _debootstrap_rootfs(rootfs)
        docker._trim_rootfs(rootfs)
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=600)
        partial.rename(tarball)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
        partial.unlink(missing_ok=True)
    _log(f"node root filesystem made in {time.monotonic() - started:.0f} s")
    return tarball


def ensure_node_image() -> str:
    """The node image tag: the cached root filesystem imported into Docker (made on first use) with
    the entrypoint and containerd config layered on by a small offline `docker build`."""
    docker.ensure_daemon()
    tag = node_image_tag()
    if docker.image_exists(tag):
        return tag
    base = f"{NODE_IMAGE_REPOSITORY}-rootfs:{_packages_stamp()}"
    if not docker.image_exists(base):
        _docker("import", "-", base, stdin=_node_rootfs_tarball())
    _docker("build", "--tag", tag, "--build-arg", f"BASE={base}", "--file", "-", str(FILES), text=_NODE_DOCKERFILE)
    return tag


# --- the pause image ---------------------------------------------------------------------------


def pause_binary() -> Path:
    """The static pause binary, built with `go build` into the tool cache (a second or two)."""
    source = FILES / "pause"
    stamp = hashlib.sha256((source / "main.go").read_bytes() + (source / "go.mod").read_bytes()).hexdigest()[:12]
    out_dir = paths.tool_dir("pause", "1")
    binary = out_dir / "pause"
    stamp_file = out_dir / STAMP_FILE
    if binary.exists() and stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        return binary
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod")
    result = subprocess.run(
        [gobuild.go_binary(), "build", "-trimpath", "-ldflags=-s -w", "-o", str(binary), "."],
        cwd=source, env=env, check=False, capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0:
        raise gobuild.GoBuildError(f"building the pause binary failed:\n{result.stderr[-2000:]}")
    stamp_file.write_text(stamp + "\n")
    return binary


def ensure_pause_image() -> str:
    """`local/taskq-pause:1` in Docker: a one-file image holding the pause binary."""
    docker.ensure_daemon()
    binary = pause_binary()
    wanted = hashlib.sha256(binary.read_bytes()).hexdigest()[:12]
    label = "taskq.pause-sha"
    if docker.image_exists(PAUSE_IMAGE):
        current = _docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', PAUSE_IMAGE)
        if current == wanted:
            return PAUSE_IMAGE
    layer = images_dir() / "pause-rootfs.tar"
    with tarfile.open(layer, "w") as archive:
        archive.add(binary, arcname="pause")
    _docker(
        "import", "--change", 'ENTRYPOINT ["/pause"]', "--change", f"LABEL {label}={wanted}",
        "-", PAUSE_IMAGE, stdin=layer,
    )
    layer.unlink()
    return PAUSE_IMAGE


def image_archive(tag: str) -> Path:
    """`docker save` of local image `tag` as a tarball for `ctr images import`, cached per image id."""
    image_id = _docker("image", "inspect", "--format", "{{.Id}}", tag).removeprefix("sha256:")[:16]
    stem = tag.replace("/", "_").replace(":", "_")
    archive = images_dir() / f"{stem}-{image_id}.tar"
    if archive.exists():
        return archive
    for older in images_dir().glob(f"{stem}-*.tar"):
        older.unlink()
    partial = archive.with_suffix(".partial")
    _docker("save", "--output", str(partial), tag, timeout=900)
    partial.rename(archive)
    return archive
