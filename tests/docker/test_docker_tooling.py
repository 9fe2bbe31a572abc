"""The docker tooling's pure parts: finding the Debian mirror in apt sources (read at run time, never
written down) and the wheelhouse requirement list. No Docker engine needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskq_dev import docker

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


def test_runtime_requirements_are_the_project_dependencies(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["pika>=1.3,<2", "pyyaml>=6"]\n')
    assert docker.runtime_requirements(tmp_path / "pyproject.toml") == ["pika>=1.3,<2", "pyyaml>=6"]
