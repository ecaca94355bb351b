"""The `jobs` projection: one row per job, the fold of its events (the same evolve as the agent), and
`job_counts`, the number of jobs in each state (not deleted), changed in the same transaction."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import asyncpg
import msgspec

from events.jobs import FileRef, JobEvent, JobHeartbeat
from events.topics import JOB_EVENTS
from projections import batch
from services.jobs.lifecycle import Job, evolve

NAME = "jobs"
TOPIC = JOB_EVENTS

COLUMNS = (
    "job_id user_id state command binary_file input_files ttl deadline submitted_at started_at finished_at "
    "exit_code answer_id stderr_id error attempt executor_id lease_until request_hash deleted version "
    "correlation_id retention"
).split()

_TYPES = {
    "job_id": "uuid", "user_id": "text", "state": "text", "command": "text", "binary_file": "jsonb",
    "input_files": "jsonb", "ttl": "bigint", "deadline": "timestamptz", "submitted_at": "timestamptz",
    "started_at": "timestamptz", "finished_at": "timestamptz", "exit_code": "int", "answer_id": "uuid",
    "stderr_id": "uuid", "error": "text", "attempt": "int", "executor_id": "text", "lease_until": "timestamptz",
    "request_hash": "text", "deleted": "boolean", "version": "int", "correlation_id": "text", "retention": "bigint",
}
# One upsert per batch (a batch holds each job once), from arrays or from the staging table (batch.py).
_ON_CONFLICT = f"""
ON CONFLICT (job_id) DO UPDATE SET {", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[1:])}
WHERE jobs.version < EXCLUDED.version
"""
_UPSERT = f"""
INSERT INTO jobs ({", ".join(COLUMNS)})
SELECT * FROM unnest({", ".join(f"${i + 1}::{_TYPES[c]}[]" for i, c in enumerate(COLUMNS))})
{_ON_CONFLICT}"""
_UPSERT_STAGED = f"""
INSERT INTO jobs ({", ".join(COLUMNS)}) SELECT {", ".join(COLUMNS)} FROM jobs_staging
{_ON_CONFLICT}"""
_JSON_COLUMNS = [i for i, c in enumerate(COLUMNS) if _TYPES[c] == "jsonb"]
# Changes of the counts by state, in state order (two projectors lock the rows in the same order).
_COUNT = """
INSERT INTO job_counts (state, n) SELECT * FROM unnest($1::text[], $2::bigint[])
ON CONFLICT (state) DO UPDATE SET n = job_counts.n + EXCLUDED.n"""
STAGING = batch.staging("jobs")


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
    counts: dict[str, int] = defaultdict(int)
    for job_id, stream in by_job.items():
        row = was = current.get(job_id)
        before = row.version if row else 0
        for event in stream:
            row = apply(row, event)
        if row is not None and row.version > before and not all(isinstance(e, JobHeartbeat) for e in stream):
            rows.append(to_record(row))
            if was is not None and not was.deleted:
                counts[was.state] -= 1
            if not row.deleted:
                counts[row.state] += 1
    if len(rows) >= batch.COPY_FROM:
        await conn.copy_records_to_table("jobs_staging", records=rows, columns=COLUMNS)
        await conn.execute(_UPSERT_STAGED)
    elif rows:
        await conn.execute(_UPSERT, *batch.arrays(rows, len(COLUMNS), _JSON_COLUMNS))
    changed = sorted(state for state, n in counts.items() if n)
    if changed:
        await conn.execute(_COUNT, changed, [counts[state] for state in changed])
