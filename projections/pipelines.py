"""The `pipelines` projection: every stored spec, from skyjobs.pipeline-events (the spec agent's events)."""

from __future__ import annotations

import asyncpg
import orjson

from events.pipelines import PipelineDeleted, PipelineSaved, SpecEvent
from events.topics import PIPELINE_EVENTS

NAME = "pipelines"
TOPIC = PIPELINE_EVENTS

_SAVE = """
INSERT INTO pipelines (name, spec, user_id, created_at, updated_at, version)
VALUES ($1, $2::text::jsonb, $3, $4, $4, $5)
ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, user_id = EXCLUDED.user_id, updated_at = EXCLUDED.updated_at,
    version = EXCLUDED.version,
    created_at = CASE WHEN $6 THEN EXCLUDED.created_at ELSE pipelines.created_at END
WHERE pipelines.version < EXCLUDED.version
"""


async def write(conn: asyncpg.Connection, events: list[SpecEvent]) -> None:
    for e in events:  # in log order; each name is one stream, so the sequence guards redelivery
        if isinstance(e, PipelineSaved):
            spec = orjson.dumps(orjson.loads(bytes(e.spec))).decode()
            await conn.execute(_SAVE, e.name, spec, e.user_id, e.occurred_at, e.sequence, e.created)
        elif isinstance(e, PipelineDeleted):
            await conn.execute("DELETE FROM pipelines WHERE name = $1 AND version < $2", e.name, e.sequence)
