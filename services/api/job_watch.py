"""What the API follows of the jobs on the process's event tail (services/api/tail.py): their final
events, so that `GET /api/job/job_info/{id}?wait=S` answers once the job's end is projected,
without the caller polling (Celery's `AsyncResult.get(timeout)`, `kubectl wait`).

    watch = JobWatch()
    watch.attach(tail)
    job = await watch.until_finished(job_id, seconds, fetch, projection_watch)

A waiter sleeps until the tail brings its job's final event, then reads the row after each
projector commit until the row shows it (usually the first): one or two reads a job instead of
one every poll. The job ids whose final event the tail brought recently are kept, so that an
event that arrived before its waiter is not waited for in vain.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import msgspec

from events.jobs import JobCancelled, JobDeleted, JobExpired, JobFailed, JobSucceeded
from events.topics import JOB_EVENTS
from services.api.freshness import ProjectionWatch
from services.api.tail import Batch, EventTail
from services.jobs.lifecycle import Job

RECENT = 10_000  # job ids whose final event this process saw, kept for the waiters that come late
MAX_WAIT = 60.0  # seconds a job_info call may wait
FINAL_TYPES = frozenset(cls.__struct_config__.tag for cls in (JobSucceeded, JobFailed, JobCancelled, JobExpired,
                                                              JobDeleted))


class _Peek(msgspec.Struct):
    type: str


_peek = msgspec.json.Decoder(_Peek)


def done(job: Job | None) -> bool:
    return job is None or job.finished or job.deleted


class JobWatch:
    def __init__(self) -> None:
        self.waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self.ended: OrderedDict[bytes, None] = OrderedDict()
        self._unfollow: Callable[[], None] | None = None

    def attach(self, tail: EventTail) -> None:
        self._unfollow = tail.follow(self._on_batch)

    def detach(self) -> None:
        if self._unfollow is not None:
            self._unfollow()

    def _on_batch(self, batch: Batch) -> None:
        for (topic, _), records in batch.items():
            if topic != JOB_EVENTS:
                continue
            for record in records:
                if record.key is None:
                    continue
                try:
                    final = _peek.decode(record.value).type in FINAL_TYPES
                except msgspec.DecodeError:
                    continue
                if final:
                    self._ended(record.key)

    def _ended(self, key: bytes) -> None:
        self.ended[key] = None
        self.ended.move_to_end(key)
        while len(self.ended) > RECENT:
            self.ended.popitem(last=False)
        for waiter in self.waiters.pop(key, []):
            if not waiter.done():
                waiter.set_result(None)

    async def until_finished(self, job_id: str, seconds: float, fetch: Callable[[], Awaitable[Job | None]],
                             projection: ProjectionWatch) -> Job | None:
        """The job's row once it shows the job finished (or deleted), or as it is after `seconds`."""
        key = job_id.encode()
        deadline = time.monotonic() + seconds
        if key not in self.ended:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiters.setdefault(key, []).append(waiter)
            try:
                await asyncio.wait_for(waiter, seconds)
            except TimeoutError:
                return await fetch()
            finally:
                waiting = self.waiters.get(key)
                if waiting is not None and waiter in waiting:
                    waiting.remove(waiter)
                    if not waiting:
                        del self.waiters[key]
        return await projection.until(fetch, done, max(0.0, deadline - time.monotonic()))
