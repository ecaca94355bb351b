"""The pipeline workers' journal: what each token attempt sent that may not be sent twice.

A table in a compacted topic (`skyjobs.pipeline-journal`, services/pipelines/tables.py) keyed like
the tokens (run id + token id), so its partition *p* holds the entries of the tokens of partition
*p* of skyjobs.pipeline-work: the worker given that partition reads it before running any of them.

An entry: {"requested": [...]} once a token attempt is about to send an unsafe request (written and
acknowledged before the request goes), {"done": true} once the token's outcome is all in Kafka,
with "expires" (after the run's deadline: then a sweep removes it).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from services.pipelines.tables import ChangelogTable


def expires(key: bytes, raw: bytes) -> float | None:
    """When a journal entry may go (what `ChangelogTable` keeps in time order)."""
    value = orjson.loads(raw).get("expires")
    return float(value) if value is not None else None


async def sweep(table: ChangelogTable, now: float | None = None) -> int:
    """Remove the entries of runs long over (tombstones, so compaction drops them)."""
    gone = table.due(time.time() if now is None else now)
    for key in gone:
        table.pop(key)
    await table.flush()
    return len(gone)


class GivenAway(RuntimeError):
    """The token's partition went to another worker before its journal entry reached Kafka."""


class Journal:
    """One token attempt's view of its entry (what the executor asks; services/pipelines/executor.py).

    One durable write per attempt, before its first unsafe request: from then on every unsafe request
    of the token may have been sent. Run again (deterministic up to there), the token meets first the
    request that was marked, so it fails where the lost worker may have sent something, and nowhere
    earlier; the later unsafe requests of the attempt need no write of their own.
    """

    def __init__(self, table: ChangelogTable, key: str, expires: float) -> None:
        self.table = table
        self.key = key.encode()
        self.expires = expires
        raw = table.get(self.key)
        self.entry: dict[str, Any] = orjson.loads(raw) if raw else {}
        self.earlier = bool(self.entry.get("requested"))  # an earlier attempt sent unsafe requests
        self.touched = False
        self._marked: asyncio.Future[None] | None = None

    @property
    def done(self) -> bool:
        return bool(self.entry.get("done"))

    def requested(self, key: str) -> bool:
        return self.earlier

    async def record(self, key: str) -> None:
        if self._marked is None:
            self._marked = asyncio.ensure_future(self._write({"requested": [key]}))
        await asyncio.shield(self._marked)

    async def finish(self) -> None:
        """The token's outcome is in Kafka: a copy delivered again is skipped (only if it sent unsafe requests)."""
        if self.touched:
            await self._write({"done": True})

    async def _write(self, change: dict[str, Any]) -> None:
        self.touched = True
        self.entry.update(change, expires=self.expires)
        # acknowledged before it returns: the write-ahead of an unsafe request
        if not await self.table.put(self.key, orjson.dumps(self.entry), due=self.expires):
            raise GivenAway(f"the partition of {self.key.decode()} went to another worker; it runs the token")
