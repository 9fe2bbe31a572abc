"""The docker tooling's pure parts: finding the Debian mirror in apt sources (read at run time, never
written down) and the wheelhouse requirement list. No Docker engine needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskq_dev import docker
from taskq_dev.image_requirements import image_requirements

DEB822 = """\
Types: deb
# a comment line
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main
"""


def _sources(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "sources.list.d"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_mirror_from_deb822_sources(tmp_path: Path) -> None:
    folder = _sources(tmp_path, {"debian.sources": DEB822})
    assert docker.debian_mirror("bookworm", [tmp_path / "sources.list", folder]) == "http://mirror.invalid/debian"


def test_mirror_from_one_line_sources_with_options(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.invalid/debian bookworm main\n"
        "deb-src http://source.invalid/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one-line.invalid/debian bookworm main contrib\n"
    )
    assert docker.debian_mirror("bookworm", [tmp_path / "sources.list"]) == "http://one-line.invalid/debian"


def test_disabled_entries_and_other_files_are_ignored(tmp_path: Path) -> None:
    folder = _sources(tmp_path, {
        "off.sources": DEB822.replace("Types: deb\n", "Types: deb\nEnabled: no\n"),
        "farm.list.disabled": "deb http://disabled.invalid/debian bookworm main\n",
    })
    with pytest.raises(docker.DockerError, match="no apt source for Debian bookworm"):
        docker.debian_mirror("bookworm", [folder])


PYPROJECT = """\
[project]
name = "taskq"
dependencies = ["pika>=1.3,<2", "pydantic>=2"]
[project.optional-dependencies]
worker = ["prometheus-client>=0.20"]
operator = ["kopf>=1.37", "prometheus-client>=0.20"]
api = ["fastapi>=0.110"]
all = ["taskq[worker,api,operator]"]
test = ["pytest>=8"]
"""


def test_runtime_requirements_are_the_base_and_image_extras_dependencies(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    assert docker.runtime_requirements(tmp_path / "pyproject.toml") == [
        "pika>=1.3,<2", "pydantic>=2", "prometheus-client>=0.20", "kopf>=1.37", "fastapi>=0.110",
    ]


@pytest.mark.parametrize(
    ("extras", "expected"),
    [
        ((), ["pika>=1.3,<2", "pydantic>=2"]),
        (("api",), ["pika>=1.3,<2", "pydantic>=2", "fastapi>=0.110"]),
        (("all",), ["pika>=1.3,<2", "pydantic>=2", "prometheus-client>=0.20", "fastapi>=0.110", "kopf>=1.37"]),
        (("all", "worker"), ["pika>=1.3,<2", "pydantic>=2", "prometheus-client>=0.20", "fastapi>=0.110", "kopf>=1.37"]),
    ],
)
def test_image_requirements_expand_self_references_once(tmp_path: Path, extras: tuple[str, ...], expected: list[str]) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    assert image_requirements(tmp_path / "pyproject.toml", extras) == expected


def test_image_requirements_refuse_an_unknown_extra(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    with pytest.raises(KeyError, match="no extra 'gui'"):
        image_requirements(tmp_path / "pyproject.toml", ["gui"])


def test_the_real_image_installs_no_test_or_bench_tools() -> None:
    found = docker.runtime_requirements(docker.repo_root() / "pyproject.toml")
    names = {requirement.split(">")[0].split("<")[0].split("=")[0].strip() for requirement in found}
    assert {"pika", "kopf", "kubernetes", "fastapi", "uvicorn", "prometheus-client"} <= names
    assert not names & {"pytest", "mypy", "celery", "matplotlib", "cryptography", "taskq"}
