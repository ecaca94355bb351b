"""The `files` projection: metadata of every stored file (the data manager's read model)."""

from __future__ import annotations

import asyncpg

from events.files import FileEvent, FilePurged, FileStored
from events.topics import FILE_EVENTS

NAME = "files"
TOPIC = FILE_EVENTS

_STORE = """
INSERT INTO files (file_id, owner_id, name, size, sha256, content_type, job_id, stored_at, version)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (file_id) DO NOTHING
"""


async def write(conn: asyncpg.Connection, events: list[FileEvent]) -> None:
    stored = [
        (e.stream_id, e.owner_id, e.name, e.size, e.sha256, e.content_type, e.job_id, e.occurred_at, e.sequence)
        for e in events
        if isinstance(e, FileStored)
    ]
    if stored:
        await conn.executemany(_STORE, stored)
    for e in events:
        if isinstance(e, FilePurged):
            await conn.execute(
                "UPDATE files SET purged_at = $2, version = $3 WHERE file_id = $1 AND version < $3",
                e.stream_id, e.occurred_at, e.sequence,
            )
