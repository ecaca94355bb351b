"""The API's tail of task events, fed records by hand: queue counts, waiters, recent endings."""

from __future__ import annotations

from datetime import timedelta

import msgspec

from events.base import new_id, utcnow
from events.codec import encode
from events.tasks import TaskAnswered, TaskFailed, TaskSubmitted
from services.api.task_watch import TaskWatch


def submitted(task_id: str, service_id: int = 7) -> bytes:
    return encode(TaskSubmitted(event_id=new_id(), stream_id=task_id, sequence=1, occurred_at=utcnow(),
                                correlation_id=task_id, service_id=service_id, service_name="s", user_id="u",
                                args=[{"data": "aGk="}], types=["file"], deadline=utcnow() + timedelta(minutes=1)))


def answered(task_id: str) -> bytes:
    return encode(TaskAnswered(event_id=new_id(), stream_id=task_id, sequence=2, occurred_at=utcnow(),
                               correlation_id=task_id, instance_id="i", attempt=1, answer=msgspec.Raw(b'{"ok":1}')))


async def test_queue_counts_across_api_processes_and_waiters() -> None:
    watch = TaskWatch()
    mine, theirs = new_id(), new_id()
    assert watch.admit(mine, 7, limit=2)
    waiter = watch.expect(mine)
    watch._on_record(submitted(mine))  # our own submission comes back: not counted twice
    watch._on_record(submitted(theirs))  # another API process's
    assert watch.outstanding[7] == 2 and not watch.admit(new_id(), 7, limit=2)
    watch._on_record(answered(mine))
    ending = await waiter
    assert isinstance(ending, TaskAnswered) and bytes(ending.answer) == b'{"ok":1}'
    assert watch.outstanding[7] == 1
    watch.forget(mine)
    assert isinstance(watch.ending(mine), TaskAnswered) and watch.ending(theirs) is None


async def test_an_abandoned_submission_is_uncounted_and_endings_of_unknown_tasks_are_harmless() -> None:
    watch = TaskWatch()
    task_id = new_id()
    assert watch.admit(task_id, 1, limit=1)
    watch.abandon(task_id)
    assert watch.outstanding[1] == 0 and watch.admit(new_id(), 1, limit=1)
    failed = TaskFailed(event_id=new_id(), stream_id=new_id(), sequence=2, occurred_at=utcnow(),
                        correlation_id="c", reason="exhausted", error="x", attempts=3)
    watch._on_record(encode(failed))  # submitted before this process started
    watch._on_record(b"not json")
    assert dict(watch.outstanding) == {1: 1}
