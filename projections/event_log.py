"""The `event_log` projection: the whole event log in Postgres, for audit, history and search.

Unlike the other projections it keeps every event, not a fold: the row key is the event's Kafka
position, and `owner` (the user the stream belongs to) lets users search only their own history.

A batch's rows go in with one statement over arrays, or, when the batch is big, one COPY straight
into the table (projections/batch.py). The projector only writes records at or above the offsets
it stored in the same transaction, so a position is never written twice, except by two projectors
that both start a partition nobody had projected yet: the later COPY then fails on the key and
the projector writes that batch again with `careful=True` (INSERT ... ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from projections import batch

NAME = "event_log"

COLUMNS = ("topic", "partition", "offset", "kind", "stream_id", "type", "sequence", "occurred_at", "actor", "owner",
           "event_id", "correlation_id", "causation_id", "data")
_TYPES = ("text", "int", "bigint", "text", "text", "text", "int", "timestamptz", "text", "text", "text", "text",
          "text", "jsonb")
_OWNERS = """
INSERT INTO stream_owners (stream_id, owner) SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING
"""
# The array path in one round trip: the owners learnt from first events, and the rows.
_INSERT = f"""
WITH owners AS (INSERT INTO stream_owners (stream_id, owner) SELECT * FROM unnest($15::text[], $16::text[])
                ON CONFLICT DO NOTHING)
INSERT INTO event_log ({", ".join(f'"{c}"' for c in COLUMNS)})
SELECT * FROM unnest({", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_TYPES))})
ON CONFLICT DO NOTHING
"""
_KNOWN_OWNERS = 200_000  # stream id -> owner kept in memory (owners never change); cleared when larger


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


_owners: dict[str, str] = {}  # learnt from first events and stream_owners: the same in every schema
_kinds: dict[str, str] = {}  # type tag -> kind (its first word)


async def write(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, logged: list[Logged],
                careful: bool = False) -> None:
    """Needs a connection whose jsonb codec is binary (db.create_pool(bulk=True)): `data` is the raw JSON."""
    first_owners: dict[str, str] = {}
    for item in logged:
        if item.event.sequence == 1 and (owner := owner_of(item.event)) is not None:
            first_owners.setdefault(item.event.stream_id, owner)
    by_copy = not careful and len(logged) >= batch.COPY_FROM
    if first_owners and by_copy:
        await conn.execute(_OWNERS, list(first_owners), list(first_owners.values()))
    if len(_owners) > _KNOWN_OWNERS:
        _owners.clear()
    for stream_id, owner in first_owners.items():
        _owners.setdefault(stream_id, owner)
    unknown = list({item.event.stream_id for item in logged} - _owners.keys())
    if unknown:
        rows = await conn.fetch("SELECT stream_id, owner FROM stream_owners WHERE stream_id = ANY($1)", unknown)
        _owners.update((r["stream_id"], r["owner"]) for r in rows)
    records = []
    for item in logged:
        e = item.event
        tag = e.__struct_config__.tag
        kind = _kinds.get(tag) or _kinds.setdefault(tag, tag.split(".", 1)[0])
        data = item.raw or msgspec.json.encode(e)  # the JSON as received
        records.append((item.topic, item.partition, item.offset, kind, e.stream_id, tag, e.sequence, e.occurred_at,
                        e.actor, _owners.get(e.stream_id) or owner_of(e), e.event_id, e.correlation_id,
                        e.causation_id, data))
    if by_copy:
        await conn.copy_records_to_table("event_log", records=records, columns=COLUMNS)
    else:
        await conn.execute(_INSERT, *batch.arrays(records, len(COLUMNS)), list(first_owners),
                           list(first_owners.values()))
