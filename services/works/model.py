"""A work as a pure fold: `decide(work, command, now)` and `evolve(work, event)`.

The work decides everything about its tasks: when one is due, whether a missed time is caught
up, whether an overlapping run is skipped, allowed or replaces the previous one. Being the single
writer of its stream (one partition, one agent), it fires exactly one task per due time, however
many schedulers send the same `fire-due` and however often they are restarted.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import msgspec

from events.base import new_id
from events.works import (
    BackfillWork,
    CreateWork,
    DeleteWork,
    FireDue,
    RecordTaskJob,
    RunWorkNow,
    TaskEnded,
    TaskScheduled,
    TaskSkipped,
    TasksMissed,
    UpdateWork,
    WorkCommand,
    WorkCreated,
    WorkDeleted,
    WorkEvent,
    WorkSpec,
    WorkUpdated,
)
from services.works import schedule

ACTIVE = 1  # the only status that is scheduled; every other status is a label (README)
FINISHED_JOB_STATES = frozenset({"succeeded", "failed", "cancelled", "expired"})
CATCHUP_GRACE = timedelta(seconds=60)  # catch-up "none" still runs a time missed by less than this
MAX_BACKFILL = 1000
_RECENT = 100
_TASK_NAMESPACE = uuid.UUID("5c7e3b9e-8f0a-4d59-9a43-5b1f0ad2c9a1")


def task_id_for(work_id: str, due_at: datetime, reason: str) -> str:
    """The same work, due time and reason always give the same task id (and job id)."""
    return uuid.uuid5(_TASK_NAMESPACE, f"{work_id}/{reason}/{due_at.isoformat()}").hex


def job_id_of(task_id: str) -> str:
    """A task runs as the job with the same UUID, written the job API's way."""
    return str(uuid.UUID(hex=task_id))


class Work(msgspec.Struct, kw_only=True):
    work_id: str
    spec: WorkSpec
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
    next_due: datetime | None = None
    fired_once: bool = False
    running: list[str] = []
    recent: list[str] = []  # last run-now task ids, to ignore a redelivered run-now
    version: int = 0
    correlation_id: str = ""


def evolve(work: Work | None, event: WorkEvent) -> Work:
    if isinstance(event, WorkCreated):
        return Work(work_id=event.stream_id, spec=event.spec, created_at=event.occurred_at,
                    updated_at=event.occurred_at, next_due=event.next_due, version=event.sequence,
                    correlation_id=event.correlation_id)
    if work is None:
        raise ValueError(f"{event.__class__.__name__} before work.created for {event.stream_id}")
    work = msgspec.structs.replace(work, version=event.sequence)
    match event:
        case WorkUpdated():
            work.spec, work.updated_at, work.next_due = event.spec, event.occurred_at, event.next_due
        case WorkDeleted():
            work.deleted_at, work.next_due, work.running = event.occurred_at, None, []
        case TaskScheduled():
            work.running = [t for t in work.running if t not in event.cancel_tasks] + [event.task_id]
            if event.reason == "manual":  # scheduled task ids are derived from their due time already
                work.recent = (work.recent + [event.task_id])[-_RECENT:]
            work.next_due = event.next_due
            work.fired_once = work.fired_once or event.reason in ("schedule", "catch-up")
        case TaskSkipped() | TasksMissed():
            work.next_due = event.next_due
            work.fired_once = True
        case TaskEnded():
            work.running = [t for t in work.running if t != event.task_id]
    return work


def initial_next_due(spec: WorkSpec, now: datetime, fired_once: bool = False) -> datetime | None:
    """When an active work is next due, counting from now."""
    if spec.status != ACTIVE:
        return None
    parsed = schedule.parse(spec.run_frequency)
    if parsed is None:
        return None
    if parsed.expression is None:  # once
        return None if fired_once else now
    return parsed.next_after(now)


def decide(work: Work | None, command: WorkCommand, now: datetime) -> list[WorkEvent]:
    if isinstance(command, CreateWork):
        if work is not None:
            return []
        return [WorkCreated(**_meta(None, command, now), spec=command.spec,
                            next_due=initial_next_due(command.spec, now))]
    if work is None or work.deleted_at is not None:
        return []
    meta = _meta(work, command, now)
    match command:
        case UpdateWork():
            before = work.spec
            after = command.spec
            next_due = work.next_due
            if after.status != before.status or after.run_frequency != before.run_frequency:
                next_due = initial_next_due(after, now, work.fired_once)  # resumed: from now, no catch-up
            return [WorkUpdated(**meta, spec=after, next_due=next_due)]
        case DeleteWork():
            return [WorkDeleted(**meta, cancel_tasks=list(work.running))]
        case RunWorkNow() if command.task_id not in work.recent:
            return [TaskScheduled(**meta, task_id=command.task_id, due_at=None, reason="manual",
                                  next_due=work.next_due)]
        case BackfillWork():
            return _backfill(work, command, meta)
        case FireDue() if work.next_due is not None and command.due_at == work.next_due:
            return _fire(work, now, meta)
        case RecordTaskJob() if command.job_state in FINISHED_JOB_STATES and command.task_id in work.running:
            return [TaskEnded(**meta, task_id=command.task_id, job_state=command.job_state)]
    return []


def _backfill(work: Work, command: BackfillWork, meta: dict[str, Any]) -> list[WorkEvent]:
    parsed = schedule.parse(work.spec.run_frequency)
    if parsed is None or parsed.expression is None:
        return []
    events: list[WorkEvent] = []
    for due in parsed.between(command.start, command.end):
        if len(events) >= MAX_BACKFILL:
            break
        task_id = task_id_for(work.work_id, due, "backfill")
        events.append(TaskScheduled(**_next(meta, len(events)), task_id=task_id, due_at=due, reason="backfill",
                                    next_due=work.next_due))
    return events


def _fire(work: Work, now: datetime, meta: dict[str, Any]) -> list[WorkEvent]:
    assert work.next_due is not None
    parsed = schedule.parse(work.spec.run_frequency)
    if parsed is None:
        return []
    dues = [work.next_due] if parsed.expression is None else list(_bounded(parsed.between(work.next_due, now)))
    next_due = parsed.next_after(now)
    policy = work.spec.catchup
    if policy == "all":
        chosen, missed = dues[: schedule.MAX_CATCHUP], dues[schedule.MAX_CATCHUP:]
    elif policy == "none":
        chosen = [d for d in dues[-1:] if now - d <= CATCHUP_GRACE]
        missed = [d for d in dues if d not in chosen]
    else:  # one run for all the missed times
        chosen, missed = dues[-1:], dues[:-1]
    events: list[WorkEvent] = []
    if missed:
        events.append(TasksMissed(**_next(meta, 0), count=len(missed), first=missed[0], last=missed[-1],
                                  next_due=next_due))
    running = list(work.running)
    for due in chosen:
        reason = "catch-up" if missed or len(chosen) > 1 else "schedule"
        task_id = task_id_for(work.work_id, due, "schedule")
        event_meta = _next(meta, len(events))
        if running and work.spec.overlap == "skip":
            events.append(TaskSkipped(**event_meta, task_id=task_id, due_at=due, next_due=next_due,
                                      reason=f"previous task {running[-1]} is still running"))
            continue
        cancel = running if work.spec.overlap == "cancel_previous" else []
        events.append(TaskScheduled(**event_meta, task_id=task_id, due_at=due, reason=reason, next_due=next_due,
                                    cancel_tasks=cancel))
        running = [t for t in running if t not in cancel] + [task_id]
    if not events:  # nothing due after all (catch-up "none" with only old times): move on
        events.append(TasksMissed(**_next(meta, 0), count=0, first=work.next_due, last=work.next_due,
                                  next_due=next_due))
    return events


def _bounded(dues: Any) -> Any:
    """At most MAX_CATCHUP * 10 due times are looked at: a long outage of a per-second cron stays cheap."""
    for i, due in enumerate(dues):
        if i >= schedule.MAX_CATCHUP * 10:
            return
        yield due


def _next(meta: dict[str, Any], offset: int) -> dict[str, Any]:
    """Metadata of the (offset+1)-th event decided by one command."""
    return {**meta, "event_id": new_id(), "sequence": meta["sequence"] + offset}


def _meta(work: Work | None, command: WorkCommand, now: datetime) -> dict[str, Any]:
    return {
        "event_id": new_id(),
        "stream_id": command.stream_id,
        "sequence": (work.version if work else 0) + 1,
        "occurred_at": now,
        "correlation_id": (work.correlation_id if work else None) or command.correlation_id or command.command_id,
        "causation_id": command.command_id,
        "actor": command.actor,
    }
