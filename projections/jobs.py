"""The `jobs` projection: one row per job, the fold of its events (the same evolve as the agent)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import asyncpg
import msgspec

from events.jobs import FileRef, JobEvent, JobHeartbeat
from events.topics import JOB_EVENTS
from services.jobs.lifecycle import Job, evolve

NAME = "jobs"
TOPIC = JOB_EVENTS

COLUMNS = (
    "job_id user_id state command binary_file input_files ttl deadline submitted_at started_at finished_at "
    "exit_code answer_id stderr_id error attempt executor_id lease_until request_hash deleted version "
    "correlation_id"
).split()

_UPSERT = f"""
INSERT INTO jobs ({", ".join(COLUMNS)}) VALUES ({", ".join(f"${i + 1}" for i in range(len(COLUMNS)))})
ON CONFLICT (job_id) DO UPDATE SET {", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[1:])}
WHERE jobs.version < EXCLUDED.version
"""


def apply(row: Job | None, event: JobEvent) -> Job | None:
    """Fold one event into a row; events the row already holds change nothing (redelivery)."""
    if row is not None and event.sequence <= row.version:
        return row
    if row is None and event.sequence != 1:
        return None  # a stream whose start is missing (never expected): keep no half row
    return evolve(row, event)


def to_record(job: Job) -> tuple[Any, ...]:
    values = msgspec.structs.asdict(job)
    values["binary_file"] = msgspec.to_builtins(job.binary) if job.binary else None
    values["input_files"] = msgspec.to_builtins(job.input_files)
    return tuple(values[c] for c in COLUMNS)


def from_record(record: asyncpg.Record) -> Job:
    values = dict(record)
    values["job_id"] = str(values["job_id"])
    for key in ("answer_id", "stderr_id"):
        values[key] = str(values[key]) if values[key] else None
    binary = values.pop("binary_file")
    values["binary"] = FileRef(**binary) if binary else None
    values["input_files"] = [FileRef(**f) for f in values["input_files"]]
    return Job(**values)


async def write(conn: asyncpg.Connection, events: list[JobEvent]) -> None:
    by_job: dict[str, list[JobEvent]] = defaultdict(list)
    for event in events:
        by_job[event.stream_id].append(event)
    current = {
        str(r["job_id"]): from_record(r)
        for r in await conn.fetch(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE job_id = ANY($1::uuid[])", list(by_job))
    }
    rows = []
    for job_id, stream in by_job.items():
        row = current.get(job_id)
        before = row.version if row else 0
        for event in stream:
            row = apply(row, event)
        if row is not None and row.version > before and not all(isinstance(e, JobHeartbeat) for e in stream):
            rows.append(to_record(row))
    if rows:
        await conn.executemany(_UPSERT, rows)
