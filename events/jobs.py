"""The job stream (seed 001): commands on `skyjobs.job-commands`, events on `skyjobs.job-events`.

Commands come from the API (run, cancel, delete), from executors (start, heartbeat, finish) and
from the lease keeper (expire, release; delete once a job's retention has passed, forget once a
deleted job's state may leave the lifecycle table). The lifecycle agent turns them into events. An executor
reports a job's start only once it has run for a moment: a job that ends sooner is reported by one
`job.finish` carrying its start time, which decides `job.started` and the outcome together.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from events.base import Command, Event


class FileRef(msgspec.Struct, frozen=True):
    """A stored file placed into the job's working directory under `name`."""

    file_id: str
    name: str


# --- commands -----------------------------------------------------------------------------------


class RunJob(Command, frozen=True, tag="job.run.v1"):
    user_id: str
    command: str
    binary: FileRef | None = None
    input_files: list[FileRef] = []
    ttl: int | None = None
    request_hash: str | None = None
    labels: dict[str, str] = {}  # who asked, e.g. {"work_id": ..., "task_id": ...} for a work's task
    retention: int | None = None  # seconds the job is kept once finished (then deleted); None: the default


class CancelJob(Command, frozen=True, tag="job.cancel.v1"):
    reason: str = "cancelled by user"


class DeleteJob(Command, frozen=True, tag="job.delete.v1"):
    """From the API (a user's delete) or from the lease keeper (the job's retention has passed)."""


class StartJob(Command, frozen=True, tag="job.start.v1"):
    executor_id: str
    attempt: int


class Heartbeat(Command, frozen=True, tag="job.heartbeat.v1"):
    executor_id: str
    attempt: int


class FinishJob(Command, frozen=True, tag="job.finish.v1"):
    """The job's process ended. `started_at` also decides the start when no `job.start` was (a short job)."""

    executor_id: str
    attempt: int
    exit_code: int | None
    answer_id: str | None = None
    stderr_id: str | None = None
    error: str | None = None
    started_at: datetime | None = None


class ExpireJob(Command, frozen=True, tag="job.expire.v1"):
    """The job's ttl has passed (sent by the lease keeper)."""


class ReleaseJob(Command, frozen=True, tag="job.release.v1"):
    """The executor holding the job stopped heartbeating (sent by the lease keeper)."""

    attempt: int


class ForgetJob(Command, frozen=True, tag="job.forget.v1"):
    """A deleted job's state may leave the lifecycle agent's table (sent by the lease keeper; no event:
    the job's events stay in the log and its rows in the projections)."""


JobCommand = RunJob | CancelJob | DeleteJob | StartJob | Heartbeat | FinishJob | ExpireJob | ReleaseJob | ForgetJob


# --- events -------------------------------------------------------------------------------------


class JobSubmitted(Event, frozen=True, tag="job.submitted.v1"):
    user_id: str
    command: str
    binary: FileRef | None = None
    input_files: list[FileRef] = []
    ttl: int | None = None
    deadline: datetime | None = None
    request_hash: str | None = None
    submitted_at: datetime | None = None  # when the API accepted the run (occurred_at is the decision)
    labels: dict[str, str] = {}
    retention: int | None = None  # seconds the job is kept once finished, then deleted; None: until deleted


class JobStarted(Event, frozen=True, tag="job.started.v1"):
    executor_id: str
    attempt: int


class JobHeartbeat(Event, frozen=True, tag="job.heartbeat-recorded.v1"):
    executor_id: str
    attempt: int


class JobSucceeded(Event, frozen=True, tag="job.succeeded.v1"):
    exit_code: int
    answer_id: str | None = None
    stderr_id: str | None = None


class JobFailed(Event, frozen=True, tag="job.failed.v1"):
    error: str
    exit_code: int | None = None
    answer_id: str | None = None
    stderr_id: str | None = None


class JobCancelRequested(Event, frozen=True, tag="job.cancel-requested.v1"):
    reason: str


class JobCancelled(Event, frozen=True, tag="job.cancelled.v1"):
    reason: str
    exit_code: int | None = None
    answer_id: str | None = None
    stderr_id: str | None = None


class JobExpired(Event, frozen=True, tag="job.expired.v1"):
    reason: str


class JobRequeued(Event, frozen=True, tag="job.requeued.v1"):
    attempt: int
    reason: str


class JobDeleted(Event, frozen=True, tag="job.deleted.v1"):
    answer_id: str | None = None
    stderr_id: str | None = None


JobEvent = (
    JobSubmitted
    | JobStarted
    | JobHeartbeat
    | JobSucceeded
    | JobFailed
    | JobCancelRequested
    | JobCancelled
    | JobExpired
    | JobRequeued
    | JobDeleted
)

# Events after which the executor must stop the job's process if it holds it.
STOP_EVENTS = (JobCancelRequested, JobCancelled, JobExpired, JobDeleted)
