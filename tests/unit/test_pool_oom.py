"""Reading the memory cgroup's OOM-kill count (both cgroup versions) and telling whether it moved."""

from __future__ import annotations

from pathlib import Path

from taskq.worker.pools.oom import OomWatch, oom_kills

V1 = "oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n"
V2 = "low 0\nhigh 0\nmax 3\noom {n}\noom_kill {n}\noom_group_kill 0\n"


def test_the_count_is_read_from_either_cgroup_version(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "memory.oom_control", tmp_path / "memory.events"
    v1.write_text(V1.format(n=2))
    v2.write_text(V2.format(n=5))
    assert oom_kills([str(v1)]) == 2
    assert oom_kills([str(v2)]) == 5
    assert oom_kills([str(tmp_path / "missing"), str(v1)]) == 2  # the first readable one
    assert oom_kills([str(tmp_path / "missing")]) is None
    (tmp_path / "old").write_text("oom_kill_disable 0\nunder_oom 0\n")  # kernels before 4.13: no count
    assert oom_kills([str(tmp_path / "old")]) is None


def test_the_watch_says_whether_the_oom_killer_acted_since_the_last_look(tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text(V2.format(n=0))
    watch = OomWatch([str(events)])
    assert not watch.acted()
    events.write_text(V2.format(n=1))
    assert watch.acted()
    assert not watch.acted()  # counted once
    assert not OomWatch([str(tmp_path / "missing")]).acted()  # unreadable: never claims an OOM kill
