"""Periodic tasks' pure arithmetic: slots, deterministic ids, missed-slot policies, replays, time zones, parsing."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from taskq.core import limits
from taskq.core.message import TASK_ID_PATTERN
from taskq_dev import manifests
from taskq_operator.core.schedules import (
    MAX_SLOTS_PER_TICK,
    Plan,
    Schedule,
    ScheduleState,
    plan,
    slot_task_id,
    slots_between,
    states_from_status,
    status_entry,
)
from taskq_operator.core.spec import SpecError, parse_taskqueue

T0 = datetime(2026, 12, 2, 3, 0, 30, tzinfo=UTC)
EVERY_5 = Schedule("report", "*/5 * * * *", "echo")


def run(schedule: Schedule, start: datetime, ticks: list[datetime], state: ScheduleState | None = None) -> list[datetime]:
    """Drive `plan` through ticks, carrying the state as the status would; every slot enqueued, in order."""
    enqueued: list[datetime] = []
    for now in [start, *ticks]:
        result = plan(schedule, state, now)
        enqueued.extend(result.slots)
        state = states_from_status({"schedules": [status_entry(schedule, result, "tq")]})[schedule.name]
    return enqueued


def test_a_new_schedule_enqueues_only_slots_after_it_was_seen() -> None:
    first = plan(EVERY_5, None, T0)
    assert first.slots == () and first.state.since == T0
    assert first.next_slot == datetime(2026, 12, 2, 3, 5, tzinfo=UTC)


def test_one_task_per_slot_across_ticks() -> None:
    ticks = [T0 + timedelta(seconds=s) for s in range(10, 1800, 10)]
    slots = run(EVERY_5, T0, ticks)
    assert slots == [datetime(2026, 12, 2, 3, m, tzinfo=UTC) for m in range(5, 35, 5)]


def test_replays_and_restarts_enqueue_the_same_ids() -> None:
    """A replica replaying a tick from an older status, or one restarting from the status, yields the same ids."""
    state = plan(EVERY_5, None, T0).state
    after = plan(EVERY_5, state, T0 + timedelta(minutes=11))
    replay = plan(EVERY_5, state, T0 + timedelta(minutes=11, seconds=3))  # a second replica, same status
    ids = [slot_task_id("tq", EVERY_5.name, s) for s in after.slots]
    assert ids == [slot_task_id("tq", EVERY_5.name, s) for s in replay.slots] == ["tq.report.20261202T031000Z"]
    restarted = states_from_status({"schedules": [status_entry(EVERY_5, after, "tq")]})["report"]
    assert plan(EVERY_5, restarted, T0 + timedelta(minutes=12)).slots == ()


def test_skip_enqueues_only_the_latest_missed_slot() -> None:
    state = plan(EVERY_5, None, T0).state
    late = plan(EVERY_5, state, T0 + timedelta(minutes=31))  # down for half an hour
    assert late.slots == (datetime(2026, 12, 2, 3, 30, tzinfo=UTC),)
    assert late.state.skipped == 5


def test_catch_up_enqueues_every_missed_slot_bounded_per_tick() -> None:
    catch_up = Schedule("report", "* * * * *", "echo", missed="catchUp")
    state = plan(catch_up, None, T0).state
    now = T0 + timedelta(hours=3)
    first = plan(catch_up, state, now)
    assert len(first.slots) == MAX_SLOTS_PER_TICK and first.slots[0] == datetime(2026, 12, 2, 3, 1, tzinfo=UTC)
    second = plan(catch_up, first.state, now)
    assert len(second.slots) == 180 - MAX_SLOTS_PER_TICK and second.slots[-1] == datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
    assert not set(first.slots) & set(second.slots)


def test_skip_far_behind_still_enqueues_one() -> None:
    every_minute = Schedule("m", "* * * * *", "echo")
    state = plan(every_minute, None, T0).state
    late = plan(every_minute, state, T0 + timedelta(days=1))
    assert late.slots == (datetime(2026, 12, 3, 3, 0, tzinfo=UTC),)


def test_time_zone_and_daylight_saving() -> None:
    daily = Schedule("d", "0 9 * * *", "echo", timezone="Europe/Berlin")
    start = datetime(2026, 3, 27, 0, 0, tzinfo=UTC)
    slots = slots_between(daily, start, start + timedelta(days=3), 10)
    # 09:00 CET is 08:00 UTC; after the switch on 29 March, 09:00 CEST is 07:00 UTC.
    assert slots == [
        datetime(2026, 3, 27, 8, 0, tzinfo=UTC),
        datetime(2026, 3, 28, 8, 0, tzinfo=UTC),
        datetime(2026, 3, 29, 7, 0, tzinfo=UTC),
    ]


def test_slot_ids_are_task_ids() -> None:
    longest = "a" * limits.TASKQUEUE_NAME_MAX_LENGTH
    name = "b" * limits.SCHEDULE_NAME_MAX_LENGTH
    assert re.fullmatch(TASK_ID_PATTERN, slot_task_id(longest, name, T0))


def test_status_round_trip() -> None:
    result = Plan((T0,), ScheduleState("report", T0 - timedelta(hours=1), T0, 2), T0 + timedelta(minutes=5))
    entry = status_entry(EVERY_5, result, "tq")
    assert entry == {
        "name": "report",
        "since": "2026-12-02T02:00:30Z",
        "lastSlot": "2026-12-02T03:00:30Z",
        "lastTaskId": "tq.report.20261202T030030Z",
        "nextSlot": "2026-12-02T03:05:30Z",
        "skipped": 2,
    }
    assert states_from_status({"schedules": [entry]})["report"] == result.state


def _tq(schedules: list[dict[str, object]]) -> dict[str, object]:
    body = manifests.taskqueue("q", worker={"image": "w"})
    body["spec"]["schedules"] = schedules  # type: ignore[index]
    return body


def test_parser_reads_schedules() -> None:
    spec = parse_taskqueue(
        _tq([{"name": "nightly", "cron": "0 3 * * mon-fri", "task": "echo", "args": [1], "timeZone": "Europe/Berlin"}])
    )
    assert spec.schedules == (Schedule("nightly", "0 3 * * mon-fri", "echo", "Europe/Berlin", (1,), {}, "skip"),)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"name": "a", "cron": "* * *", "task": "echo"}, "spec.schedules[0].cron must have 5 fields"),
        ({"name": "a", "cron": "*/0 * * * *", "task": "echo"}, "spec.schedules[0].cron is not a valid cron expression"),
        ({"name": "a", "cron": "61 * * * *", "task": "echo"}, "spec.schedules[0].cron is not a valid cron expression"),
        ({"name": "a", "cron": "* * * * *", "task": "echo", "timeZone": "Mars/Base"}, "unknown time zone"),
        ({"name": "A_", "cron": "* * * * *", "task": "echo"}, "spec.schedules[0].name must be a DNS-1123 label"),
        ({"name": "a", "cron": "* * * * *", "task": "echo", "missedSlots": "all"}, "missedSlots must be one of"),
    ],
)
def test_parser_rejects_invalid_schedules(schedule: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_taskqueue(_tq([schedule]))


def test_parser_rejects_duplicate_names() -> None:
    twice = {"name": "a", "cron": "* * * * *", "task": "echo"}
    with pytest.raises(SpecError, match="unique"):
        parse_taskqueue(_tq([twice, twice]))


def test_cron_pattern_of_the_crd_agrees_with_croniter_on_examples() -> None:
    for good in ("*/5 * * * *", "0 3 * * mon-fri", "0 0 1 JAN *", "15,45 9-17 * * 1-5", "0 12 1-7/2 * 0"):
        assert re.fullmatch(limits.CRON_PATTERN, good), good
        parse_taskqueue(_tq([{"name": "a", "cron": good, "task": "echo"}]))
    for bad in ("* * *", "61 * * * *", "0 24 * * *", "0 0 32 * *", "0 0 * 13 *", "0 0 * * 8", "@daily", "a b c d e"):
        assert not re.fullmatch(limits.CRON_PATTERN, bad), bad
