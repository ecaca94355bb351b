"""Scheduler decisions with a fake clock: frequencies, time zones and DST, missed windows, overlap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from events.base import new_id
from events.works import (
    BackfillWork,
    CreateWork,
    FireDue,
    RecordTaskJob,
    RunWorkNow,
    TaskEnded,
    TaskScheduled,
    TaskSkipped,
    TasksMissed,
    UpdateWork,
    WorkSpec,
)
from services.works import schedule
from services.works.model import Work, decide, evolve, task_id_for

T0 = datetime(2026, 3, 2, 10, 17, tzinfo=UTC)  # a Monday


def spec(**changes: object) -> WorkSpec:
    base = {"user_id": "u", "name": "n", "description": "d", "type": "BATCH", "category": "SHELL",
            "command": "true", "run_frequency": "hourly"}
    return WorkSpec(**(base | changes))  # type: ignore[arg-type]


def meta(work_id: str, at: datetime = T0) -> dict:
    return {"command_id": new_id(), "stream_id": work_id, "issued_at": at}


class Clock:
    """Feeds commands to decide/evolve at a chosen time, like the work agent does."""

    def __init__(self, work_spec: WorkSpec, at: datetime = T0) -> None:
        self.work_id = new_id().replace("-", "")
        self.work: Work | None = None
        self.events: list = []
        self.send(CreateWork(**meta(self.work_id, at), spec=work_spec), at)

    def send(self, command: object, now: datetime) -> list:
        decided = decide(self.work, command, now)  # type: ignore[arg-type]
        for event in decided:
            self.work = evolve(self.work, event)
        self.events += decided
        return decided

    def fire(self, now: datetime) -> list:
        assert self.work is not None and self.work.next_due is not None
        return self.send(FireDue(**meta(self.work_id, now), due_at=self.work.next_due), now)


def test_named_frequencies() -> None:
    hourly, daily, weekly = (schedule.parse(f) for f in ("hourly", "daily", "weekly"))
    assert hourly and hourly.next_after(T0) == datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
    assert daily and daily.next_after(T0) == datetime(2026, 3, 3, 0, 0, tzinfo=UTC)
    assert weekly and weekly.next_after(T0) == datetime(2026, 3, 9, 0, 0, tzinfo=UTC)  # next Monday
    once = schedule.parse("once")
    assert once is not None and once.next_after(T0) is None
    assert schedule.parse(None) is None


def test_cron_in_a_time_zone_across_daylight_saving() -> None:
    paris = schedule.parse("CRON_TZ=Europe/Paris 30 2 * * *")
    assert paris is not None
    # 2026-03-29: clocks jump from 02:00 to 03:00 in Paris; the skipped 02:30 runs shifted by the gap.
    before = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    first = paris.next_after(before)
    second = paris.next_after(first)  # type: ignore[arg-type]
    assert first == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 03:30 CEST, once
    assert second == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)  # 02:30 CEST
    autumn = paris.next_after(datetime(2026, 10, 24, 12, 0, tzinfo=UTC))
    assert autumn == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # the first 02:30 (CEST)...
    assert paris.next_after(autumn) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)  # ...and not the second


@pytest.mark.parametrize("bad", ["every day", "61 * * * *", "* * *", "CRON_TZ=Mars/Olympus 0 * * * *"])
def test_bad_frequencies_are_refused(bad: str) -> None:
    with pytest.raises(schedule.ScheduleError):
        schedule.parse(bad)


def test_once_fires_at_creation_and_never_again() -> None:
    clock = Clock(spec(run_frequency="once"))
    assert clock.work is not None and clock.work.next_due == T0
    (scheduled,) = clock.fire(T0 + timedelta(milliseconds=150))
    assert isinstance(scheduled, TaskScheduled) and scheduled.due_at == T0 and scheduled.reason == "schedule"
    assert clock.work.next_due is None
    # a duplicate fire-due (two schedulers, a restart) decides nothing: exactly one task per due time
    assert clock.send(FireDue(**meta(clock.work_id), due_at=T0), T0 + timedelta(seconds=1)) == []


def test_hourly_fires_each_hour_once() -> None:
    clock = Clock(spec())
    due = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
    (first,) = clock.fire(due + timedelta(milliseconds=200))
    assert first.due_at == due and first.task_id == task_id_for(clock.work_id, due, "schedule")
    assert clock.work is not None and clock.work.next_due == due + timedelta(hours=1)
    assert clock.send(FireDue(**meta(clock.work_id), due_at=due), due + timedelta(seconds=2)) == []


def test_missed_windows_run_once_by_default() -> None:
    clock = Clock(spec(overlap="allow"))
    later = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)  # 11:00 .. 15:00 were missed (down for hours)
    events = clock.fire(later)
    assert [type(e) for e in events] == [TasksMissed, TaskScheduled]
    assert events[0].count == 4 and events[1].due_at == datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
    assert events[1].reason == "catch-up"
    assert clock.work is not None and clock.work.next_due == datetime(2026, 3, 2, 16, 0, tzinfo=UTC)


def test_missed_windows_all_and_none() -> None:
    later = datetime(2026, 3, 2, 13, 30, tzinfo=UTC)
    every = Clock(spec(catchup="all", overlap="allow"))
    assert [e.due_at.hour for e in every.fire(later)] == [11, 12, 13]
    skip = Clock(spec(catchup="none"))
    events = skip.fire(later)
    assert [type(e) for e in events] == [TasksMissed] and events[0].count == 3


def test_overlap_skip_allow_cancel_previous() -> None:
    due = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
    for policy, expected in (("skip", TaskSkipped), ("allow", TaskScheduled), ("cancel_previous", TaskScheduled)):
        clock = Clock(spec(overlap=policy))
        (first,) = clock.fire(due)
        (second,) = clock.fire(due + timedelta(hours=1))
        assert isinstance(second, expected), policy
        if policy == "cancel_previous":
            assert second.cancel_tasks == [first.task_id]
    # once the first task ended, the next one runs again under "skip"
    clock = Clock(spec(overlap="skip"))
    (first,) = clock.fire(due)
    (ended,) = clock.send(RecordTaskJob(**meta(clock.work_id), task_id=first.task_id, job_state="succeeded", at=due),
                          due + timedelta(minutes=5))
    assert isinstance(ended, TaskEnded)
    assert isinstance(clock.fire(due + timedelta(hours=1))[0], TaskScheduled)


def test_pause_and_resume_do_not_catch_up_the_pause() -> None:
    clock = Clock(spec())
    paused = clock.send(UpdateWork(**meta(clock.work_id), spec=spec(status=2)), T0)
    assert clock.work is not None and clock.work.next_due is None and paused
    resume_at = T0 + timedelta(hours=5)
    clock.send(UpdateWork(**meta(clock.work_id), spec=spec(status=1)), resume_at)
    assert clock.work.next_due == datetime(2026, 3, 2, 16, 0, tzinfo=UTC)


def test_manual_runs_and_backfill() -> None:
    clock = Clock(spec())
    task_id = new_id().replace("-", "")
    (manual,) = clock.send(RunWorkNow(**meta(clock.work_id), task_id=task_id), T0)
    assert manual.reason == "manual" and manual.due_at is None
    assert clock.send(RunWorkNow(**meta(clock.work_id), task_id=task_id), T0) == []  # redelivered: ignored
    start, end = datetime(2026, 3, 1, 0, 0, tzinfo=UTC), datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
    events = clock.send(BackfillWork(**meta(clock.work_id), start=start, end=end), T0)
    assert [e.due_at.hour for e in events] == [0, 1, 2, 3] and {e.reason for e in events} == {"backfill"}
    assert [e.sequence for e in events] == list(range(events[0].sequence, events[0].sequence + 4))
