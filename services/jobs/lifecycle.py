"""The job lifecycle as a pure fold: `evolve(state, event)` and `decide(state, command, now)`.

No I/O and no clock of its own: the agent passes `now` in. Commands that do not apply to the
current state decide no events (a repeated cancel, a late heartbeat, a duplicate run), which is
what makes redelivered commands harmless.

    queued ──start──> running ──finish──> succeeded | failed
      └──finish (with started_at: a short job)──> running, succeeded | failed
      │                 │ └──cancel──> cancelling ──finish──> cancelled
      │                 └──release (lease lost)──> queued (attempt+1) | failed
      └──cancel──> cancelled          any unfinished ──ttl──> expired

A finished job with a retention is deleted once it has passed (the lease keeper sends the delete);
a deleted job's state leaves the agent's table `forget_after` its finish (no event: its events stay
in the log, its rows in the projections, and every later command about it decides nothing).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Protocol

import msgspec

from events.base import new_id
from events.jobs import (
    CancelJob,
    DeleteJob,
    ExpireJob,
    FileRef,
    FinishJob,
    Heartbeat,
    JobCancelled,
    JobCancelRequested,
    JobCommand,
    JobDeleted,
    JobEvent,
    JobExpired,
    JobFailed,
    JobHeartbeat,
    JobRequeued,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    ReleaseJob,
    RunJob,
    StartJob,
)

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLING = "cancelling"
CANCELLED = "cancelled"
EXPIRED = "expired"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED, EXPIRED)
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})


class Policy(msgspec.Struct, frozen=True):
    """Knobs of the lifecycle that are configuration, not state."""

    lease_timeout: float = 30.0
    max_attempts: int = 3
    retention: int | None = None  # of a job whose run does not say (None: kept until deleted)
    forget_after: float = 3600.0  # a deleted job's state is dropped this long after its finish at the earliest


DEFAULT_POLICY = Policy()


class Job(msgspec.Struct, kw_only=True):
    """The folded state of one job (also the value of the faust table)."""

    job_id: str
    user_id: str
    state: str
    command: str
    binary: FileRef | None = None
    input_files: list[FileRef] = []
    ttl: int | None = None
    deadline: datetime | None = None
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    answer_id: str | None = None
    stderr_id: str | None = None
    error: str | None = None
    attempt: int = 1
    executor_id: str | None = None
    lease_until: datetime | None = None
    request_hash: str | None = None
    labels: dict[str, str] = {}
    retention: int | None = None
    deleted: bool = False
    version: int = 0
    correlation_id: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


def evolve(job: Job | None, event: JobEvent, policy: Policy = DEFAULT_POLICY) -> Job:
    """Apply one event to the state (the state is None before `job.submitted`)."""
    if isinstance(event, JobSubmitted):
        return Job(
            job_id=event.stream_id,
            user_id=event.user_id,
            state=QUEUED,
            command=event.command,
            binary=event.binary,
            input_files=list(event.input_files),
            ttl=event.ttl,
            deadline=event.deadline,
            submitted_at=event.submitted_at or event.occurred_at,
            request_hash=event.request_hash,
            labels=dict(event.labels),
            retention=event.retention,
            version=event.sequence,
            correlation_id=event.correlation_id,
        )
    if job is None:
        raise ValueError(f"{event.__class__.__name__} before job.submitted for {event.stream_id}")
    job = msgspec.structs.replace(job, version=event.sequence)
    lease = timedelta(seconds=policy.lease_timeout)
    match event:
        case JobStarted():
            job.state, job.started_at = RUNNING, event.occurred_at
            job.executor_id, job.attempt = event.executor_id, event.attempt
            job.lease_until = event.occurred_at + lease
        case JobHeartbeat():
            job.lease_until = event.occurred_at + lease
        case JobSucceeded():
            _finish(job, SUCCEEDED, event.occurred_at, event.exit_code, event.answer_id, event.stderr_id, None)
        case JobFailed():
            _finish(job, FAILED, event.occurred_at, event.exit_code, event.answer_id, event.stderr_id, event.error)
        case JobCancelRequested():
            job.state, job.error = CANCELLING, event.reason
        case JobCancelled():
            _finish(job, CANCELLED, event.occurred_at, event.exit_code, event.answer_id, event.stderr_id, event.reason)
        case JobExpired():
            _finish(job, EXPIRED, event.occurred_at, None, job.answer_id, job.stderr_id, event.reason)
        case JobRequeued():
            job.state, job.attempt, job.error = QUEUED, event.attempt, event.reason
            job.executor_id = job.lease_until = job.started_at = None
        case JobDeleted():
            job.deleted = True
            if not job.finished:
                _finish(job, CANCELLED, event.occurred_at, None, None, None, "deleted")
    return job


def _finish(
    job: Job,
    state: str,
    at: datetime,
    exit_code: int | None,
    answer_id: str | None,
    stderr_id: str | None,
    error: str | None,
) -> None:
    job.state, job.finished_at, job.exit_code, job.error = state, at, exit_code, error
    job.answer_id, job.stderr_id = answer_id, stderr_id
    job.lease_until = None


def decide(job: Job | None, command: JobCommand, now: datetime, policy: Policy = DEFAULT_POLICY) -> list[JobEvent]:
    """The events a command causes in the current state (often none)."""
    if isinstance(command, RunJob):
        if job is not None:
            return []  # a redelivered or idempotent run: the job exists already
        submitted_at = min(command.issued_at, now)
        deadline = submitted_at + timedelta(seconds=command.ttl) if command.ttl is not None else None
        return [
            JobSubmitted(
                **_meta(None, command, now),
                user_id=command.user_id,
                command=command.command,
                binary=command.binary,
                input_files=command.input_files,
                ttl=command.ttl,
                deadline=deadline,
                request_hash=command.request_hash,
                submitted_at=submitted_at,
                labels=command.labels,
                retention=command.retention if command.retention is not None else policy.retention,
            )
        ]
    if job is None or job.deleted:
        return []
    if isinstance(command, FinishJob) and command.started_at is not None and job.state == QUEUED:
        if command.attempt != job.attempt:
            return []
        # A short job (or one whose start report was lost): its start and its end, decided together.
        started = JobStarted(**{**_meta(job, command, now), "occurred_at": min(command.started_at, now)},
                             executor_id=command.executor_id, attempt=command.attempt)
        finish = msgspec.structs.replace(command, started_at=None)
        return [started, *decide(evolve(job, started, policy), finish, now, policy)]
    meta = _meta(job, command, now)
    match command:
        case StartJob() if job.state == QUEUED and command.attempt == job.attempt:
            return [JobStarted(**meta, executor_id=command.executor_id, attempt=command.attempt)]
        case Heartbeat() if _holds(job, command.executor_id, command.attempt):
            return [JobHeartbeat(**meta, executor_id=command.executor_id, attempt=command.attempt)]
        case FinishJob() if _holds(job, command.executor_id, command.attempt):
            outputs: dict[str, Any] = {"answer_id": command.answer_id, "stderr_id": command.stderr_id}
            if job.state == CANCELLING:
                return [JobCancelled(**meta, reason=job.error or "cancelled", exit_code=command.exit_code, **outputs)]
            if command.exit_code == 0 and command.error is None:
                return [JobSucceeded(**meta, exit_code=0, **outputs)]
            error = command.error or f"exited with code {command.exit_code}"
            return [JobFailed(**meta, exit_code=command.exit_code, error=error, **outputs)]
        case CancelJob() if job.state == QUEUED:
            return [JobCancelled(**meta, reason=command.reason)]
        case CancelJob() if job.state == RUNNING:
            return [JobCancelRequested(**meta, reason=command.reason)]
        case ExpireJob() if not job.finished and job.deadline is not None and now >= job.deadline:
            return [JobExpired(**meta, reason=f"ttl of {job.ttl} s passed")]
        case ReleaseJob() if _lease_lost(job, command.attempt, now):
            return [_release(job, meta, policy)]
        case DeleteJob():
            return [JobDeleted(**meta, answer_id=job.answer_id, stderr_id=job.stderr_id)]
    return []


def _holds(job: Job, executor_id: str, attempt: int) -> bool:
    return job.state in (RUNNING, CANCELLING) and job.executor_id == executor_id and job.attempt == attempt


def _lease_lost(job: Job, attempt: int, now: datetime) -> bool:
    return (
        job.state in (RUNNING, CANCELLING)
        and job.attempt == attempt
        and job.lease_until is not None
        and now >= job.lease_until
    )


def _release(job: Job, meta: dict[str, Any], policy: Policy) -> JobEvent:
    reason = f"executor {job.executor_id} stopped heartbeating (attempt {job.attempt})"
    if job.state == CANCELLING:
        return JobCancelled(**meta, reason=f"cancelled; {reason}")
    if job.attempt >= policy.max_attempts:
        return JobFailed(**meta, error=f"{reason}; gave up after {job.attempt} attempts")
    return JobRequeued(**meta, attempt=job.attempt + 1, reason=reason)


def _meta(job: Job | None, command: JobCommand, now: datetime) -> dict[str, Any]:
    # What an executor reports happened when it says (bounded by now against clock skew).
    reported = isinstance(command, StartJob | Heartbeat | FinishJob)
    return {
        "event_id": new_id(),
        "stream_id": command.stream_id,
        "sequence": (job.version if job else 0) + 1,
        "occurred_at": min(command.issued_at, now) if reported else now,
        "correlation_id": (job.correlation_id if job else None) or command.correlation_id or command.command_id,
        "causation_id": command.command_id,
        "actor": command.actor,
    }


class Due(Protocol):
    """What the lease keeper's index reads of a job (a `Job`, or only these fields of one)."""

    state: str
    deleted: bool
    deadline: datetime | None
    lease_until: datetime | None
    finished_at: datetime | None
    retention: int | None


def due_at(job: Due, policy: Policy = DEFAULT_POLICY) -> datetime | None:
    """When the lease keeper may next have something to send for the job (`due_commands`), if ever."""
    if job.state in FINISHED:
        if job.finished_at is None:
            return None
        if job.deleted:
            return job.finished_at + timedelta(seconds=max(job.retention or 0, policy.forget_after))
        return job.finished_at + timedelta(seconds=job.retention) if job.retention else None
    if job.deleted:
        return None
    leased = job.lease_until if job.state in (RUNNING, CANCELLING) else None
    times = [t for t in (job.deadline, leased) if t is not None]
    return min(times) if times else None


def due_commands(job: Job, now: datetime, policy: Policy = DEFAULT_POLICY) -> list[str]:
    """What the lease keeper should send for this job now: 'expire', 'release', 'delete' (its
    retention has passed), 'forget' (deleted, and finished long enough ago), or nothing."""
    due = []
    if not job.finished and job.deadline is not None and now >= job.deadline:
        due.append("expire")
    if job.state in (RUNNING, CANCELLING) and job.lease_until is not None and now >= job.lease_until:
        due.append("release")
    if job.finished and (at := due_at(job, policy)) is not None and now >= at:
        due.append("forget" if job.deleted else "delete")
    return due
