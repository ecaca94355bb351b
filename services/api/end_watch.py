"""What the API follows of the ends of jobs and pipeline runs on the process's event tail
(services/api/tail.py), so that `GET /api/job/job_info/{id}?wait=S` and
`GET /api/pipeline_runs/{id}?wait=S` answer once the end is projected, without the caller polling
(Celery's `AsyncResult.get(timeout)`, `kubectl wait`, Temporal's `handle.result()`).

    jobs = EndWatch(JOB_EVENTS, JOB_ENDS)
    stop = tail.follow(jobs.on_batch)
    job = await jobs.until_finished(job_id, seconds, fetch, done, projection_watch)

A waiter sleeps until the tail brings its stream's final event, then reads the row after each
projector commit until `done(row)` (usually at the first): one or two reads a wait instead of one
every poll. The ids whose final event the tail brought recently are kept, so that an event that
arrived before its waiter is not waited for in vain.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec

from events.jobs import JobCancelled, JobDeleted, JobExpired, JobFailed, JobSucceeded
from events.pipelines import RunEnded
from services.api.freshness import ProjectionWatch
from services.api.tail import Batch

T = TypeVar("T")

RECENT = 10_000  # ids whose final event this process saw, kept for the waiters that come late
JOB_ENDS = frozenset(str(cls.__struct_config__.tag) for cls in (JobSucceeded, JobFailed, JobCancelled,
                                                                JobExpired, JobDeleted))
RUN_ENDS = frozenset({str(RunEnded.__struct_config__.tag)})


class _Peek(msgspec.Struct):
    type: str


_peek = msgspec.json.Decoder(_Peek)


class EndWatch:
    def __init__(self, topic: str, final_types: frozenset[str]) -> None:
        self.topic = topic
        self.final_types = final_types
        self.waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self.ended: OrderedDict[bytes, None] = OrderedDict()

    def on_batch(self, batch: Batch) -> None:
        """What the tail hands on (`tail.follow(watch.on_batch)`)."""
        for (topic, _), records in batch.items():
            if topic != self.topic:
                continue
            for record in records:
                if record.key is None:
                    continue
                try:
                    final = _peek.decode(record.value).type in self.final_types
                except msgspec.DecodeError:
                    continue
                if final:
                    self.end(key=record.key)

    def end(self, key: bytes) -> None:
        """The stream `key` has ended: wake its waiters (also for a follower that reads the type itself)."""
        self.ended[key] = None
        self.ended.move_to_end(key)
        while len(self.ended) > RECENT:
            self.ended.popitem(last=False)
        for waiter in self.waiters.pop(key, []):
            if not waiter.done():
                waiter.set_result(None)

    async def until_finished(self, stream_id: str, seconds: float, fetch: Callable[[], Awaitable[T]],
                             done: Callable[[T], bool], projection: ProjectionWatch) -> T:
        """`fetch()` once `done` says it shows the end, or as it is after `seconds`."""
        key = stream_id.encode()
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
