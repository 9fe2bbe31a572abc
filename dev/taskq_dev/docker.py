"""Docker tooling for the taskq image: the engine, a local base image, a wheelhouse and the build.

No image can be pulled on the development machines, so the image is built on a base made here:
Debian bookworm with python3 (debootstrap of the machine's own apt mirror, then `docker import`).
The Python dependencies are downloaded on the host into a wheelhouse inside the build context, and
the Dockerfile installs from it without an index (`PIP_NO_INDEX`), so the build needs no network.

Called by `taskq-dev image ...` (`taskq_dev.cli`), `make image`, `make kind-e2e` and the `docker`
tests. Every step is cached: a running engine, an existing base image and an up-to-date wheelhouse
are reused.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from taskq_dev.image_requirements import IMAGE_EXTRAS, image_requirements
from taskq_dev.paths import state_dir
from taskq_dev.ports import WaitTimeout, wait_until

BASE_IMAGE = "local/debian-python:bookworm"
"""The locally made base image passed to the Dockerfile as `BASE_IMAGE`."""

IMAGE = "taskq:dev"
"""The tag of the taskq image the tooling builds."""

DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
"""python3 runs taskq; python3-venv brings ensurepip so the build stage can make a venv."""

WHEELHOUSE = Path("build") / "wheelhouse"
"""Where, relative to the build context, the host puts the dependency wheels (git-ignored)."""

BUILD_TOOLS = ("setuptools>=77", "wheel")
"""What building the taskq wheel itself needs inside the image (its build-system requirements)."""

APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


class DockerError(RuntimeError):
    """The engine, the base image or the build failed; the message says what to look at."""


def repo_root() -> Path:
    """The checkout this module belongs to (the build context)."""
    return Path(__file__).resolve().parents[2]


def docker_binary() -> str:
    found = shutil.which("docker")
    if found is None:
        raise DockerError("the docker client is not on PATH (Debian: apt-get install docker.io)")
    return found


def _run(args: Sequence[str], *, timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-20:])
        raise DockerError(f"`{' '.join(args[:3])} ...` failed (exit {result.returncode}):\n{tail}")
    return result


def daemon_running() -> bool:
    """Whether `docker info` answers (the engine is up and this user may use it)."""
    try:
        return _run([docker_binary(), "info", "--format", "{{.ServerVersion}}"], timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def daemon_log() -> Path:
    return state_dir("docker") / "dockerd.log"


def ensure_daemon(timeout: float = 60.0) -> None:
    """Start `dockerd` in the background unless an engine already answers, then wait for it.

    The engine is left running for later builds and tests; its log is `daemon_log()`.
    """
    if daemon_running():
        return
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not Path(dockerd).exists():
        raise DockerError("no Docker engine answers and dockerd is not installed (apt-get install docker.io)")
    log_path = daemon_log()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [dockerd], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    (state_dir("docker") / "dockerd.pid").write_text(f"{process.pid}\n")
    try:
        wait_until(
            daemon_running,
            timeout=timeout,
            what=f"dockerd to answer (log: {log_path})",
            interval=0.5,
            give_up=lambda: f"dockerd exited with {process.returncode}" if process.poll() is not None else None,
        )
    except WaitTimeout as exc:
        raise DockerError(str(exc)) from None


def image_exists(tag: str) -> bool:
    return _run([docker_binary(), "image", "inspect", tag], timeout=30, check=False).returncode == 0


def image_size_bytes(tag: str) -> int:
    """The uncompressed size of an image, as `docker images` reports it."""
    out = _run([docker_binary(), "image", "inspect", "--format", "{{.Size}}", tag], timeout=30).stdout
    return int(out.strip())


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]


def _deb822_sources(text: str) -> Iterable[AptSource]:
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            yield AptSource(uri=uri, suites=tuple(fields.get("suites", "").split()))


def _one_line_sources(text: str) -> Iterable[AptSource]:
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            yield AptSource(uri=words[1], suites=(words[2],))


def apt_sources(locations: Sequence[Path] = APT_SOURCES) -> list[AptSource]:
    """Every enabled binary-package source of this machine's apt configuration."""
    files: list[Path] = []
    for location in locations:
        if location.is_dir():
            files += sorted(p for p in location.iterdir() if p.suffix in (".sources", ".list"))
        elif location.is_file():
            files.append(location)
    found: list[AptSource] = []
    for path in files:
        text = path.read_text(errors="replace")
        found += list(_deb822_sources(text) if path.suffix == ".sources" else _one_line_sources(text))
    return found


def debian_mirror(suite: str = DEBIAN_SUITE, locations: Sequence[Path] = APT_SOURCES) -> str:
    """The mirror this machine installs `suite` from (read at run time, never written down)."""
    for source in apt_sources(locations):
        if suite in source.suites:
            return source.uri
    raise DockerError(f"no apt source for Debian {suite} in {', '.join(str(p) for p in locations)}")


TRIMMED_FOLDERS = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt", "var/lib/apt/lists")
"""Documentation, translations and apt caches: of no use in a runtime image (about 50 MB)."""


def _trim_rootfs(rootfs: Path) -> None:
    for folder in TRIMMED_FOLDERS:
        target = rootfs / folder
        if target.is_dir():
            for entry in target.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()


def ensure_base_image(tag: str = BASE_IMAGE, *, rebuild: bool = False) -> str:
    """Make `tag` (Debian minbase + python3) with debootstrap and `docker import`, once."""
    ensure_daemon()
    if image_exists(tag) and not rebuild:
        return tag
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise DockerError("debootstrap is not installed (apt-get install debootstrap)")
    rootfs = state_dir("docker") / f"rootfs-{os.getpid()}"
    shutil.rmtree(rootfs, ignore_errors=True)
    started = time.monotonic()
    print(f"taskq-dev: making base image {tag} with debootstrap (first run only)", file=sys.stderr, flush=True)
    try:
        _run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                debian_mirror(),
            ],
            timeout=900,
        )
        _trim_rootfs(rootfs)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [docker_binary(), "import", "--change", 'CMD ["/bin/bash"]', "-", tag],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if tar.stdout is not None:
            tar.stdout.close()
        tar.wait(timeout=60)
        if imported.returncode != 0 or tar.returncode != 0:
            raise DockerError(f"docker import of {rootfs} failed: {imported.stderr.strip()[-2000:]}")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    print(f"taskq-dev: base image {tag} made in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return tag


def runtime_requirements(pyproject: Path) -> list[str]:
    """What the image installs next to the taskq wheel: the dependencies of `taskq[worker,operator,api]`."""
    return image_requirements(pyproject, IMAGE_EXTRAS)


def ensure_wheelhouse(context: Path) -> Path:
    """Download (on the host) every wheel the image build needs into `context/build/wheelhouse`.

    Skipped when the wheelhouse was filled for the same requirement list; a stamp file holds its hash.
    """
    requirements = [*runtime_requirements(context / "pyproject.toml"), *BUILD_TOOLS]
    digest = hashlib.sha256("\n".join(requirements).encode()).hexdigest()
    wheelhouse = context / WHEELHOUSE
    stamp = wheelhouse / ".requirements.sha256"
    if stamp.exists() and stamp.read_text().strip() == digest:
        return wheelhouse
    wheelhouse.mkdir(parents=True, exist_ok=True)
    print(f"taskq-dev: collecting dependency wheels into {wheelhouse}", file=sys.stderr, flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheelhouse), *requirements],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        raise DockerError(f"pip wheel for the image failed:\n{result.stderr.strip()[-3000:]}")
    stamp.write_text(digest + "\n")
    return wheelhouse


def build_image(
    tag: str = IMAGE,
    *,
    base_image: str | None = BASE_IMAGE,
    context: Path | None = None,
    offline: bool = True,
) -> str:
    """Build the taskq image from the repository's Dockerfile and return its tag.

    `base_image=None` keeps the Dockerfile's default (an official slim Python image, for machines
    that can pull). `offline=True` installs from the host-made wheelhouse with no index.
    """
    ensure_daemon()
    context = context or repo_root()
    args = [docker_binary(), "build", "--tag", tag]
    if base_image is not None:
        if base_image == BASE_IMAGE:
            ensure_base_image(base_image)
        args += ["--build-arg", f"BASE_IMAGE={base_image}"]
    args += ["--build-arg", f"TASKQ_EXTRAS={','.join(IMAGE_EXTRAS)}"]
    if offline:
        ensure_wheelhouse(context)
        args += [
            "--build-arg",
            "PIP_NO_INDEX=1",
            "--build-arg",
            f"PIP_FIND_LINKS=/deps/{WHEELHOUSE.name}",  # the Dockerfile copies build/* to /deps/
        ]
    args.append(str(context))
    started = time.monotonic()
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=1800, env=dict(os.environ, DOCKER_BUILDKIT="0")
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
        raise DockerError(f"docker build of {tag} failed:\n{tail}")
    print(
        f"taskq-dev: built {tag} in {time.monotonic() - started:.0f} s "
        f"({image_size_bytes(tag) / 1e6:.0f} MB)",
        file=sys.stderr,
        flush=True,
    )
    return tag
