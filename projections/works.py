"""The `works` projection: the works table and the work_tasks history, from skyjobs.work-events.

A task's status, start, end and run time are not stored here: they are its job's, read from the
`jobs` projection (job id = task id), so the two can never disagree.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from events.topics import WORK_EVENTS
from events.works import (
    TaskScheduled,
    TaskSkipped,
    WorkCreated,
    WorkDeleted,
    WorkEvent,
    WorkSpec,
    WorkUpdated,
)
from services.works.model import job_id_of

NAME = "works"
TOPIC = WORK_EVENTS

SPEC_COLUMNS = (
    "lambda_id user_id name description type category status work_directory main_class_name extra_params "
    "java_version run_frequency command overlap catchup ttl"
).split()

_CREATE = f"""
INSERT INTO works (work_id, {", ".join(SPEC_COLUMNS)}, created_at, updated_at, next_due, last_command_id, version)
VALUES ($1, {", ".join(f"${i + 2}" for i in range(len(SPEC_COLUMNS)))}, $18, $18, $19, $20, $21)
ON CONFLICT (work_id) DO NOTHING
"""
_UPDATE = f"""
UPDATE works SET {", ".join(f"{c} = ${i + 2}" for i, c in enumerate(SPEC_COLUMNS))},
    updated_at = $18, next_due = $19, last_command_id = $20, version = $21
WHERE work_id = $1 AND version < $21
"""
_DELETE = """
UPDATE works SET deleted_at = $2, next_due = NULL, last_command_id = $3, version = $4
WHERE work_id = $1 AND version < $4
"""
_NEXT_DUE = "UPDATE works SET next_due = $2, version = $3 WHERE work_id = $1 AND version < $3"
_TASK = """
INSERT INTO work_tasks (task_id, work_id, job_id, reason, due_at, scheduled_at, skipped, command_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (task_id) DO NOTHING
"""


def spec_values(spec: WorkSpec) -> list[Any]:
    return [getattr(spec, c) for c in SPEC_COLUMNS]


async def write(conn: asyncpg.Connection, events: list[WorkEvent]) -> None:
    # In log order: each statement is guarded by the row's version, so a redelivered event is a no-op.
    for e in events:
        match e:
            case WorkCreated() | WorkUpdated():
                sql = _CREATE if isinstance(e, WorkCreated) else _UPDATE
                await conn.execute(sql, e.stream_id, *spec_values(e.spec), e.occurred_at, e.next_due,
                                   e.causation_id, e.sequence)
            case WorkDeleted():
                await conn.execute(_DELETE, e.stream_id, e.occurred_at, e.causation_id, e.sequence)
            case TaskScheduled() | TaskSkipped():
                skipped = e.reason if isinstance(e, TaskSkipped) else None
                reason = "schedule" if isinstance(e, TaskSkipped) else e.reason
                await conn.execute(_TASK, e.task_id, e.stream_id, job_id_of(e.task_id), reason, e.due_at,
                                   e.occurred_at, skipped, e.causation_id)
                await conn.execute(_NEXT_DUE, e.stream_id, e.next_due, e.sequence)
            case _:
                next_due = getattr(e, "next_due", None)
                if hasattr(e, "next_due"):
                    await conn.execute(_NEXT_DUE, e.stream_id, next_due, e.sequence)
                else:
                    await conn.execute("UPDATE works SET version = $2 WHERE work_id = $1 AND version < $2",
                                       e.stream_id, e.sequence)
