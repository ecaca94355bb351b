"""A task's fold and the router's decisions after each attempt."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from events.base import new_id
from events.tasks import (
    EXHAUSTED,
    EXPIRED,
    NO_INSTANCE,
    REJECTED,
    TaskAnswered,
    TaskAttemptFailed,
    TaskEvent,
    TaskFailed,
    TaskSubmitted,
)
from services.proxy.tasks import (
    ANSWERED,
    FAILED,
    PENDING,
    Answered,
    Errored,
    Expired,
    NoInstance,
    Task,
    apply,
    backoff,
    decide,
    evolve,
)

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def submitted() -> TaskSubmitted:
    task_id = new_id()
    return TaskSubmitted(event_id=new_id(), stream_id=task_id, sequence=1, occurred_at=NOW, correlation_id=task_id,
                         service_id=0, service_name="echo", user_id="alice", args=[1], types=["int"],
                         deadline=NOW + timedelta(minutes=10))


def fold(task: Task, events: list[TaskEvent]) -> Task:
    for event in events:
        task = evolve(task, event)
    return task


def test_an_answer_ends_the_task() -> None:
    task = evolve(None, submitted())
    assert task.state == PENDING and task.version == 1 and task.user_id == "alice"
    events = decide(task, Answered("i1", b'{"ok": true}'), NOW, max_attempts=3)
    assert [type(e) for e in events] == [TaskAnswered]
    answered = events[0]
    assert isinstance(answered, TaskAnswered) and answered.sequence == 2 and answered.attempt == 1
    assert msgspec.json.encode(answered).count(b'"answer":{"ok": true}') == 1  # the instance's JSON, as sent
    task = fold(task, events)
    assert task.state == ANSWERED and task.answer == b'{"ok": true}' and task.instance_id == "i1"
    assert decide(task, Answered("i2", b"1"), NOW, 3) == []


def test_retryable_errors_are_attempts_until_the_last_one() -> None:
    task = evolve(None, submitted())
    first = decide(task, Errored("i1", "refused"), NOW, max_attempts=2)
    assert [type(e) for e in first] == [TaskAttemptFailed]
    task = fold(task, first)
    assert task.state == PENDING and task.attempts == 1
    last = decide(task, Errored("i2", "timeout"), NOW, max_attempts=2)
    assert [type(e) for e in last] == [TaskAttemptFailed, TaskFailed]
    assert [e.sequence for e in last] == [3, 4]
    task = fold(task, last)
    assert task.state == FAILED and task.failure == EXHAUSTED and task.attempts == 2 and "timeout" in (task.error or "")


def test_a_refusal_is_not_retried() -> None:
    task = evolve(None, submitted())
    events = decide(task, Errored("i1", "bad image", retryable=False), NOW, max_attempts=3)
    assert [type(e) for e in events] == [TaskFailed]
    task = fold(task, events)
    assert task.failure == REJECTED and task.attempts == 1 and task.instance_id == "i1"


def test_no_instance_and_expiry_end_the_task() -> None:
    for outcome, reason in ((NoInstance("none up"), NO_INSTANCE), (Expired(), EXPIRED)):
        task = evolve(None, submitted())
        events = decide(task, outcome, NOW, max_attempts=3)
        assert [type(e) for e in events] == [TaskFailed]
        assert isinstance(events[0], TaskFailed) and events[0].reason == reason and events[0].attempts == 0


def test_apply_keeps_the_first_ending_and_ignores_repeats() -> None:
    event = submitted()
    row = apply(None, event)
    assert row is not None and apply(row, event) is row
    answered = decide(row, Answered("i1", b"1"), NOW, 3)
    row2 = apply(row, answered[0])
    assert row2 is not None and row2.state == ANSWERED
    failed_later = TaskFailed(event_id=new_id(), stream_id=event.stream_id, sequence=3, occurred_at=NOW,
                              correlation_id="c", reason=EXHAUSTED, error="x", attempts=3)
    assert apply(row2, failed_later) is row2
    assert apply(None, answered[0]) is None  # no half rows when the start is missing


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff(n, 0.1) for n in (1, 2, 3)] == [0.1, 0.2, 0.4]
    assert backoff(20, 0.1) == 2.0
