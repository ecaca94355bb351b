"""Read-your-writes over eventually consistent projections.

The projector NOTIFYs after each committed batch. A read that misses an id the API minted a
moment ago (ids are UUIDv7, so their age is known) waits for the next notifications, bounded,
instead of answering 404 for a job that is on its way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import uuid_utils

from projections.runner import NOTIFY_CHANNEL
from services import db

T = TypeVar("T")


class ProjectionWatch:
    def __init__(self, database_url: str, max_wait: float) -> None:
        self.database_url = database_url
        self.max_wait = max_wait
        self._changed = asyncio.Event()
        self._conn: asyncpg.Connection | None = None

    async def start(self) -> None:
        self._conn = await db.connect(self.database_url)
        await self._conn.add_listener(NOTIFY_CHANNEL, self._on_notify)

    async def stop(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    def _on_notify(self, *_: object) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def is_recent(self, entity_id: str) -> bool:
        """True for a UUIDv7 minted within the wait window (it may not be projected yet)."""
        try:
            parsed = uuid_utils.UUID(entity_id)
        except ValueError:
            return False
        if parsed.version != 7:
            return False
        age = time.time() - parsed.timestamp / 1000
        return -5 <= age <= self.max_wait

    async def read(self, entity_id: str, fetch: Callable[[], Awaitable[T | None]]) -> T | None:
        """`fetch()`, retried after each projector commit while `entity_id` is recent."""
        found = await fetch()
        if found is not None or not self.is_recent(entity_id):
            return found
        return await self.until(fetch, lambda row: row is not None)

    async def until(self, fetch: Callable[[], Awaitable[T]], done: Callable[[T], bool],
                    max_wait: float | None = None) -> T:
        """`fetch()` after each projector commit until `done(result)` or the wait window ends."""
        deadline = time.monotonic() + (self.max_wait if max_wait is None else max_wait)
        while True:
            changed = self._changed
            found = await fetch()
            remaining = deadline - time.monotonic()
            if done(found) or remaining <= 0:
                return found
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass
