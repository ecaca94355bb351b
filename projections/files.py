"""The `files` projection: metadata of every stored file (the data manager's read model).

One statement per batch for the stored files (over arrays, or from a COPY when the batch is big:
projections/batch.py) and one for the purged ones.
"""

from __future__ import annotations

import asyncpg

from events.files import FileEvent, FilePurged, FileStored
from events.topics import FILE_EVENTS
from projections import batch

NAME = "files"
TOPIC = FILE_EVENTS

_COLUMNS = "file_id, owner_id, name, size, sha256, content_type, job_id, stored_at, version"
_STORE = f"""
INSERT INTO files ({_COLUMNS})
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::uuid[],
                     $8::timestamptz[], $9::int[])
ON CONFLICT (file_id) DO NOTHING
"""
_STORE_STAGED = f"INSERT INTO files ({_COLUMNS}) SELECT {_COLUMNS} FROM files_staging ON CONFLICT (file_id) DO NOTHING"
STAGING = batch.staging("files")
_PURGE = """
UPDATE files f SET purged_at = u.purged_at, version = u.version
FROM unnest($1::uuid[], $2::timestamptz[], $3::int[]) AS u(file_id, purged_at, version)
WHERE f.file_id = u.file_id AND f.version < u.version
"""


async def write(conn: asyncpg.Connection, events: list[FileEvent]) -> None:
    stored = [
        (e.stream_id, e.owner_id, e.name, e.size, e.sha256, e.content_type, e.job_id, e.occurred_at, e.sequence)
        for e in events
        if isinstance(e, FileStored)
    ]
    if len(stored) >= batch.COPY_FROM:
        await conn.copy_records_to_table("files_staging", records=stored, columns=_COLUMNS.split(", "))
        await conn.execute(_STORE_STAGED)
    elif stored:
        await conn.execute(_STORE, *batch.arrays(stored, 9))
    purged = {e.stream_id: (e.stream_id, e.occurred_at, e.sequence) for e in events if isinstance(e, FilePurged)}
    if purged:  # one row per file (UPDATE ... FROM touches a row once): a file is purged once anyway
        await conn.execute(_PURGE, *batch.arrays(list(purged.values()), 3))
