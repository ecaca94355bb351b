"""The task stream (seed 004's add_task): events on `skyjobs.task-events`, keyed by task id.

The API writes `task.submitted` (sequence 1: it mints the task id, so nobody can write before it);
from then on the router is the only writer: attempts that failed, then exactly one of answered or
failed. The router reads the same topic, which is how a restarted router knows which of the tasks
it had not acknowledged were answered already.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from events.base import Event

# Why a task failed (`TaskFailed.reason`); the API maps each to an HTTP status.
REJECTED = "rejected"  # the instance refused the arguments (it answered 4xx): retrying elsewhere is pointless
EXHAUSTED = "exhausted"  # every attempt failed (errors, timeouts, instances that died)
NO_INSTANCE = "no_instance"  # no healthy instance of the service was there to take it
EXPIRED = "expired"  # no instance took it before its deadline (the router was down or the queue too long)
INTERNAL = "internal"  # the router itself failed on it (a fault of skyjobs: its log says what)
FAILURE_REASONS = (REJECTED, EXHAUSTED, NO_INSTANCE, EXPIRED, INTERNAL)


class TaskSubmitted(Event, frozen=True, tag="task.submitted.v1"):
    """A task accepted by the API. `args` are checked against the service's arguments already.

    An image or file argument is `{"file_id": ...}` (a file of the data manager) or `{"data": ...}`
    (base64); `types` holds the declared type of each argument, in order.
    """

    service_id: int
    service_name: str
    user_id: str
    args: list[Any]
    types: list[str]
    deadline: datetime


class TaskAttemptFailed(Event, frozen=True, tag="task.attempt-failed.v1"):
    """One attempt on one instance failed; another attempt follows unless this was the last."""

    instance_id: str
    attempt: int
    error: str


class TaskAnswered(Event, frozen=True, tag="task.answered.v1"):
    """The instance's answer: the JSON it returned, or `null` and a file id when it was too large."""

    instance_id: str
    attempt: int
    answer: msgspec.Raw
    answer_file_id: str | None = None


class TaskFailed(Event, frozen=True, tag="task.failed.v1"):
    reason: str  # one of FAILURE_REASONS
    error: str
    attempts: int
    instance_id: str | None = None


TaskEvent = TaskSubmitted | TaskAttemptFailed | TaskAnswered | TaskFailed
TERMINAL_TYPES = ("task.answered.v1", "task.failed.v1")
