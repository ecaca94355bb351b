"""A task's life as a fold, and the router's decisions after each attempt. Pure: no I/O, no clock.

    pending ──attempt ok──> answered
       │ └──attempt failed (retryable)──> pending, attempts+1 ──...──> failed (exhausted)
       ├──instance refused the arguments (4xx)──> failed (rejected)
       ├──no healthy instance──> failed (no_instance)
       └──deadline passed before an instance took it──> failed (expired)

The router is the only writer after `task.submitted`, and a task lives in one router process from
start to end; a router that dies mid-task leaves it unacknowledged, and the next owner of the
partition runs it again from the attempts it can read in the log (at-least-once).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from events.base import new_id
from events.tasks import (
    EXHAUSTED,
    EXPIRED,
    INTERNAL,
    NO_INSTANCE,
    REJECTED,
    TaskAnswered,
    TaskAttemptFailed,
    TaskEvent,
    TaskFailed,
    TaskSubmitted,
)

PENDING = "pending"
ANSWERED = "answered"
FAILED = "failed"
STATES = (PENDING, ANSWERED, FAILED)


class Task(msgspec.Struct, kw_only=True):
    """The folded state of one task (the row of the `tasks` projection)."""

    task_id: str
    service_id: int
    user_id: str
    state: str = PENDING
    attempts: int = 0
    instance_id: str | None = None
    answer: bytes | None = None  # the instance's JSON answer, as it sent it
    answer_file_id: str | None = None
    error: str | None = None
    failure: str | None = None
    submitted_at: datetime
    finished_at: datetime | None = None
    deadline: datetime
    version: int = 0
    correlation_id: str = ""

    @property
    def finished(self) -> bool:
        return self.state != PENDING


def evolve(task: Task | None, event: TaskEvent) -> Task:
    """Apply one event to the state (None before `task.submitted`)."""
    if isinstance(event, TaskSubmitted):
        return Task(
            task_id=event.stream_id, service_id=event.service_id, user_id=event.user_id,
            submitted_at=event.occurred_at, deadline=event.deadline, version=event.sequence,
            correlation_id=event.correlation_id,
        )
    if task is None:
        raise ValueError(f"{event.__class__.__name__} before task.submitted for {event.stream_id}")
    task = msgspec.structs.replace(task, version=event.sequence)
    match event:
        case TaskAttemptFailed():
            task.attempts, task.instance_id, task.error = event.attempt, event.instance_id, event.error
        case TaskAnswered():
            task.state, task.attempts, task.instance_id = ANSWERED, event.attempt, event.instance_id
            task.answer, task.answer_file_id = bytes(event.answer), event.answer_file_id
            task.error, task.finished_at = None, event.occurred_at
        case TaskFailed():
            task.state, task.failure, task.error = FAILED, event.reason, event.error
            task.attempts, task.finished_at = event.attempts, event.occurred_at
            task.instance_id = event.instance_id or task.instance_id
    return task


def apply(task: Task | None, event: TaskEvent) -> Task | None:
    """`evolve` for readers of the log: repeated events change nothing, and the first ending wins.

    A task run twice (a router died mid-task) may show two endings; readers keep the first.
    """
    if task is None:
        return evolve(None, event) if isinstance(event, TaskSubmitted) else None
    if task.finished or event.sequence <= task.version or isinstance(event, TaskSubmitted):
        return task
    return evolve(task, event)


# --- what happened to an attempt (the router's inputs; not on the wire) ------------------------------


class Answered(msgspec.Struct, frozen=True):
    instance_id: str
    answer: bytes  # JSON; b"null" when the answer went to the blob store
    answer_file_id: str | None = None


class Errored(msgspec.Struct, frozen=True):
    instance_id: str | None  # None: the task could not be sent at all (a file it names is gone)
    error: str
    retryable: bool = True


class NoInstance(msgspec.Struct, frozen=True):
    error: str


class Crashed(msgspec.Struct, frozen=True):
    error: str  # what the router raised while it handled the task


class Expired(msgspec.Struct, frozen=True):
    pass


Outcome = Answered | Errored | NoInstance | Expired | Crashed


def decide(task: Task, outcome: Outcome, now: datetime, max_attempts: int) -> list[TaskEvent]:
    """The events an attempt's outcome causes: an answer, a failed attempt, or the end of the task."""
    if task.finished:
        return []
    events: list[TaskEvent] = []

    def meta() -> dict[str, Any]:
        return {
            "event_id": new_id(),
            "stream_id": task.task_id,
            "sequence": task.version + len(events) + 1,
            "occurred_at": now,
            "correlation_id": task.correlation_id or task.task_id,
        }

    attempt = task.attempts + 1
    match outcome:
        case Answered():
            events.append(TaskAnswered(**meta(), instance_id=outcome.instance_id, attempt=attempt,
                                       answer=msgspec.Raw(outcome.answer), answer_file_id=outcome.answer_file_id))
        case Errored() if not outcome.retryable:
            events.append(TaskFailed(**meta(), reason=REJECTED, error=outcome.error, attempts=attempt,
                                     instance_id=outcome.instance_id))
        case Errored():
            events.append(TaskAttemptFailed(**meta(), instance_id=outcome.instance_id or "", attempt=attempt,
                                            error=outcome.error))
            if attempt >= max_attempts:
                events.append(TaskFailed(**meta(), reason=EXHAUSTED, attempts=attempt, instance_id=outcome.instance_id,
                                         error=f"gave up after {attempt} attempts; last: {outcome.error}"))
        case NoInstance():
            events.append(TaskFailed(**meta(), reason=NO_INSTANCE, error=outcome.error, attempts=task.attempts))
        case Crashed():
            events.append(TaskFailed(**meta(), reason=INTERNAL, error=outcome.error, attempts=task.attempts))
        case Expired():
            events.append(TaskFailed(**meta(), reason=EXPIRED, attempts=task.attempts,
                                     error=f"no instance took the task before its deadline {task.deadline.isoformat()}"))
    return events


def backoff(attempt: int, base: float, cap: float = 2.0) -> float:
    """Delay before attempt `attempt + 1`: base, 2 base, 4 base, ... at most `cap` seconds."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))
