"""Parallel sessions building the same tool: one builds, the others wait and find the binary."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from taskq_dev import gobuild, paths, tools


def test_two_sessions_asking_for_etcd_at_once_both_get_it_built_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """etcd is built as `server` and renamed: the rename is under the build lock too (a cold CI run
    failed with FileNotFoundError when a parallel test session renamed it first)."""
    monkeypatch.setattr(paths, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(tools, "_from_environment", lambda *args: None)
    builds: list[float] = []

    def slow_build(tool: gobuild.GoTool, out_dir: Path, binaries: Sequence[str], *, lock: bool = True) -> dict[str, Path]:
        # Stands in for `go build` only (the real one takes minutes); the locking under test is the real one.
        with gobuild.locked(out_dir / ".build.lock") if lock else _nothing():
            built = out_dir / "server"
            if not built.exists():
                builds.append(time.monotonic())
                time.sleep(0.3)
                built.write_text("#!/bin/sh\n")
            return {"server": built}

    monkeypatch.setattr(gobuild, "build", slow_build)
    results: list[Path | BaseException] = []

    def ask() -> None:
        try:
            results.append(tools.etcd_binary())
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            results.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert results == [tmp_path / "tools" / "etcd" / f"v{tools.versions.ETCD}" / "etcd"] * 3
    assert len(builds) == 1


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
