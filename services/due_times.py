"""When keys fall due: the index behind every timer that must not scan what it watches.

    times = DueTimes[float]()
    times.set(b"job-1", 30.0)        # due from 30 on (a new time replaces the old one)
    times.pop_due(now)               # the keys whose time has come, earliest first, each once
    times.retry(b"job-1", now + 1)   # handed out again then, unless its time has changed meanwhile
    times.discard(b"job-1")

A dict of each key's time and a heap of (time, key). A heap entry is stale when its key's time has
moved past now or the key is gone, and is skipped; so a tick costs what is due, however many keys
are waiting. Used by the works scheduler, the jobs' lease keeper and the pipelines' changelog tables.
"""

from __future__ import annotations

import heapq
from datetime import datetime
from typing import Generic, TypeVar

T = TypeVar("T", float, datetime)


class DueTimes(Generic[T]):
    def __init__(self) -> None:
        self.at: dict[bytes, T] = {}
        self._heap: list[tuple[T, bytes]] = []

    def get(self, key: bytes) -> T | None:
        return self.at.get(key)

    def set(self, key: bytes, at: T) -> None:
        if self.at.get(key) != at:
            self.at[key] = at
            heapq.heappush(self._heap, (at, key))

    def retry(self, key: bytes, when: T) -> None:
        """Hand `key` out again at `when` if its time has not moved past then (its time is kept)."""
        heapq.heappush(self._heap, (when, key))

    def discard(self, key: bytes) -> None:
        self.at.pop(key, None)

    def clear(self) -> None:
        self.at.clear()
        self._heap.clear()

    def pop_due(self, now: T) -> list[bytes]:
        """The keys whose time has come, earliest first, once each; they stay known (`at`) until
        `set` or `discard`, but come out again only when `set` or `retry` says so."""
        out: dict[bytes, None] = {}
        while self._heap and self._heap[0][0] <= now:
            _, key = heapq.heappop(self._heap)
            at = self.at.get(key)
            if at is not None and at <= now:
                out[key] = None
        return list(out)
