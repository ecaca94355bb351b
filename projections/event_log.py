"""The `event_log` projection: the whole event log in Postgres, for audit, history and search.

Unlike the other projections it keeps every event, not a fold: the row key is the event's Kafka
position, and `owner` (the user the stream belongs to) lets users search only their own history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
import orjson

NAME = "event_log"


@dataclass(frozen=True)
class Logged:
    topic: str
    partition: int
    offset: int
    raw: bytes
    event: Any


def owner_of(event: Any) -> str | None:
    """The user a stream belongs to, when its first event says so."""
    for holder in (event, getattr(event, "spec", None)):
        for field in ("user_id", "owner_id"):
            value = getattr(holder, field, None)
            if isinstance(value, str):
                return value
    return None


_INSERT = """
INSERT INTO event_log (topic, partition, "offset", kind, stream_id, type, sequence, occurred_at, actor, owner,
                       event_id, correlation_id, causation_id, data)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::text::jsonb)
ON CONFLICT DO NOTHING
"""


async def write(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, logged: list[Logged]) -> None:
    first_owners: dict[str, str] = {}
    for item in logged:
        owner = owner_of(item.event)
        if owner is not None and item.event.sequence == 1:
            first_owners.setdefault(item.event.stream_id, owner)
    if first_owners:
        await conn.executemany(
            "INSERT INTO stream_owners (stream_id, owner) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            list(first_owners.items()),
        )
    streams = list({item.event.stream_id for item in logged})
    rows = await conn.fetch("SELECT stream_id, owner FROM stream_owners WHERE stream_id = ANY($1)", streams)
    owners = {r["stream_id"]: r["owner"] for r in rows}
    records = []
    for item in logged:
        e = item.event
        tag = e.__struct_config__.tag
        data = item.raw.decode() if item.raw else orjson.dumps(msgspec.to_builtins(e)).decode()  # JSON text as is
        records.append((item.topic, item.partition, item.offset, tag.split(".", 1)[0], e.stream_id, tag,
                        e.sequence, e.occurred_at, e.actor, owners.get(e.stream_id) or owner_of(e), e.event_id,
                        e.correlation_id, e.causation_id, data))
    await conn.executemany(_INSERT, records)
