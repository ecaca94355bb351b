"""The work stream (seed 003): commands on `skyjobs.work-commands`, events on `skyjobs.work-events`.

A work is a recurring definition; each run of it is a task, and each task runs as a job whose id
is the task id. Task events belong to their work's stream (key = work id), which is what lets the
work decide overlap and catch-up alone.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from events.base import Command, Event


class WorkSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a user sets on a work (seed 003's fields, and the scheduling policies)."""

    user_id: str
    name: str
    description: str
    type: str  # STREAMING | BATCH
    category: str  # FLINK_SQL | FLINK_JAR | SHELL
    status: int = 1
    work_directory: str | None = None
    main_class_name: str | None = None
    extra_params: list[str] = []
    java_version: str | None = None
    run_frequency: str | None = None  # once | hourly | daily | weekly | [CRON_TZ=Zone] cron expression
    command: str | None = None  # SHELL
    lambda_id: str | None = None  # the runnable artifact (a file id of the data manager)
    overlap: str = "skip"  # skip | allow | cancel_previous
    catchup: str = "one"  # one | all | none
    ttl: int | None = None  # seconds each task may run


# --- commands -----------------------------------------------------------------------------------


class CreateWork(Command, frozen=True, tag="work.create.v1"):
    spec: WorkSpec


class UpdateWork(Command, frozen=True, tag="work.update.v1"):
    spec: WorkSpec  # the whole new definition (the API merges the patch)


class DeleteWork(Command, frozen=True, tag="work.delete.v1"):
    pass


class RunWorkNow(Command, frozen=True, tag="work.run-now.v1"):
    task_id: str


class BackfillWork(Command, frozen=True, tag="work.backfill.v1"):
    start: datetime
    end: datetime


class FireDue(Command, frozen=True, tag="work.fire-due.v1"):
    """Sent by the scheduler when the work's next due time has come."""

    due_at: datetime


class RecordTaskJob(Command, frozen=True, tag="work.record-task-job.v1"):
    """Sent by the task tracker when the job of a task started or ended."""

    task_id: str
    job_state: str
    at: datetime


WorkCommand = CreateWork | UpdateWork | DeleteWork | RunWorkNow | BackfillWork | FireDue | RecordTaskJob


# --- events -------------------------------------------------------------------------------------


class WorkCreated(Event, frozen=True, tag="work.created.v1"):
    spec: WorkSpec
    next_due: datetime | None = None


class WorkUpdated(Event, frozen=True, tag="work.updated.v1"):
    spec: WorkSpec
    next_due: datetime | None = None


class WorkDeleted(Event, frozen=True, tag="work.deleted.v1"):
    cancel_tasks: list[str] = []


class TaskScheduled(Event, frozen=True, tag="work.task-scheduled.v1"):
    task_id: str
    due_at: datetime | None  # None for a manual run
    reason: str  # schedule | manual | backfill | catch-up
    next_due: datetime | None = None
    cancel_tasks: list[str] = []  # the running tasks to cancel (overlap policy cancel_previous)


class TaskSkipped(Event, frozen=True, tag="work.task-skipped.v1"):
    task_id: str
    due_at: datetime
    reason: str
    next_due: datetime | None = None


class TasksMissed(Event, frozen=True, tag="work.tasks-missed.v1"):
    """Due times that passed while nothing could fire them, not run (catch-up policy)."""

    count: int
    first: datetime
    last: datetime
    next_due: datetime | None = None


class TaskEnded(Event, frozen=True, tag="work.task-ended.v1"):
    task_id: str
    job_state: str


WorkEvent = WorkCreated | WorkUpdated | WorkDeleted | TaskScheduled | TaskSkipped | TasksMissed | TaskEnded
