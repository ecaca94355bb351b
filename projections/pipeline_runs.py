"""The `pipeline_runs` projection: one row per run, from skyjobs.pipeline-runs.

A run's events are written by every worker that ran one of its tokens, so they are folded without
relying on their order: each column is set by the event that knows it, and the first end wins (a
run's end can be written twice when its worker was lost after writing it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from events.pipelines import RunEnded, RunEvent, RunFannedOut, RunJoined, RunStarted
from events.topics import PIPELINE_RUNS

NAME = "pipeline_runs"
TOPIC = PIPELINE_RUNS

_TYPES = ("uuid text text text int text text text text int int timestamptz timestamptz timestamptz text").split()
# One statement per batch over arrays (the tasks projection measured ~1.7x the rows/s of executemany).
_UPSERT = f"""
INSERT INTO pipeline_runs AS r (run_id, pipeline, user_id, state, status, method, path, query, error, fanouts, joins,
                                started_at, finished_at, deadline, correlation_id)
SELECT * FROM unnest({", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_TYPES))})
ON CONFLICT (run_id) DO UPDATE SET
    pipeline = COALESCE(r.pipeline, EXCLUDED.pipeline), user_id = COALESCE(r.user_id, EXCLUDED.user_id),
    method = COALESCE(r.method, EXCLUDED.method), path = COALESCE(r.path, EXCLUDED.path),
    query = COALESCE(r.query, EXCLUDED.query), started_at = COALESCE(r.started_at, EXCLUDED.started_at),
    deadline = COALESCE(r.deadline, EXCLUDED.deadline), correlation_id = COALESCE(r.correlation_id, EXCLUDED.correlation_id),
    fanouts = r.fanouts + EXCLUDED.fanouts, joins = r.joins + EXCLUDED.joins,
    state = CASE WHEN r.finished_at IS NULL THEN EXCLUDED.state ELSE r.state END,
    status = CASE WHEN r.finished_at IS NULL THEN EXCLUDED.status ELSE r.status END,
    error = CASE WHEN r.finished_at IS NULL THEN EXCLUDED.error ELSE r.error END,
    finished_at = COALESCE(r.finished_at, EXCLUDED.finished_at)
"""
_FIELDS = ("pipeline user_id state status method path query error fanouts joins started_at finished_at deadline "
           "correlation_id").split()


def apply(row: dict[str, Any], event: RunEvent) -> dict[str, Any]:
    """The row with one more event (pure; order-insensitive apart from the first end winning)."""
    row = dict(row)
    row["correlation_id"] = row.get("correlation_id") or event.correlation_id
    if isinstance(event, RunStarted):
        row.update(pipeline=event.pipeline, user_id=event.user_id, method=event.method, path=event.path,
                   query=event.query, started_at=event.occurred_at,
                   deadline=datetime.fromtimestamp(event.deadline, UTC) if event.deadline else None)
    elif isinstance(event, RunFannedOut):
        row["fanouts"] = row.get("fanouts", 0) + 1
    elif isinstance(event, RunJoined):
        row["joins"] = row.get("joins", 0) + 1
    elif isinstance(event, RunEnded) and row.get("finished_at") is None:
        row.update(state=event.state, status=event.status, error=event.error, finished_at=event.occurred_at)
    return row


async def write(conn: asyncpg.Connection, events: list[RunEvent]) -> None:
    rows: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for e in events:
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        rows[e.stream_id] = apply(rows.get(e.stream_id, {"state": "running", "fanouts": 0, "joins": 0}), e)
    if rows:
        columns = [list(rows)] + [[row.get(f) for row in rows.values()] for f in _FIELDS]
        await conn.execute(_UPSERT, *columns)
