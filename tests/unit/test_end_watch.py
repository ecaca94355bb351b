"""?wait reads: the waiters of services/api/end_watch.py, fed batches as the event tail hands them on."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson

from events.base import utcnow
from events.topics import JOB_EVENTS, PIPELINE_RUNS
from services.api.end_watch import JOB_ENDS, EndWatch
from services.api.freshness import ProjectionWatch
from services.jobs.lifecycle import Job
from tests.conftest import eventually


def job(state: str) -> Job:
    return Job(job_id="j1", user_id="alice", state=state, command="true", submitted_at=utcnow())


def batch(key: bytes, type_: str) -> dict[tuple[str, int], list[SimpleNamespace]]:
    return {(JOB_EVENTS, 0): [SimpleNamespace(key=key, value=orjson.dumps({"type": type_}))]}


def over(job: Job | None) -> bool:
    return job is None or job.finished


class Rows:
    """The jobs table as the API reads it: the row shows the end once `projected` is set."""

    def __init__(self) -> None:
        self.projected = False
        self.reads = 0

    async def fetch(self) -> Job | None:
        self.reads += 1
        return job("succeeded" if self.projected else "running")


async def test_a_waiter_wakes_at_the_final_event_and_reads_once_it_is_projected() -> None:
    watch, rows, projection = EndWatch(JOB_EVENTS, JOB_ENDS), Rows(), ProjectionWatch("unused", 5)
    waiting = asyncio.ensure_future(watch.until_finished("j1", 10, rows.fetch, over, projection))
    await asyncio.sleep(0)
    watch.on_batch(batch(b"j1", "job.started.v1"))  # not final: still waiting
    watch.on_batch(batch(b"j2", "job.succeeded.v1"))  # another job
    watch.on_batch({(PIPELINE_RUNS, 0): [SimpleNamespace(key=b"j1", value=b'{"type": "job.succeeded.v1"}')]})
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done() and rows.reads == 0 and list(watch.waiters) == [b"j1"]
    watch.on_batch(batch(b"j1", "job.succeeded.v1"))

    async def read() -> bool:
        return rows.reads == 1

    await eventually(read, timeout=5, interval=0.001, what="the row read after the final event")
    assert not waiting.done()  # the event came before its row: it waits for the next commit
    rows.projected = True
    projection._on_notify()
    assert (await asyncio.wait_for(waiting, 5)).state == "succeeded"  # type: ignore[union-attr]
    assert rows.reads == 2 and watch.waiters == {}


async def test_an_end_the_tail_brought_before_the_waiter_is_not_waited_for() -> None:
    watch, rows, projection = EndWatch(JOB_EVENTS, JOB_ENDS), Rows(), ProjectionWatch("unused", 5)
    watch.on_batch(batch(b"j1", "job.deleted.v1"))
    rows.projected = True
    assert (await asyncio.wait_for(watch.until_finished("j1", 10, rows.fetch, over, projection), 5)).state == "succeeded"  # type: ignore[union-attr]
    assert rows.reads == 1


async def test_a_wait_that_passes_answers_the_job_as_it_is() -> None:
    watch, rows, projection = EndWatch(JOB_EVENTS, JOB_ENDS), Rows(), ProjectionWatch("unused", 5)
    assert (await watch.until_finished("j1", 0.05, rows.fetch, over, projection)).state == "running"  # type: ignore[union-attr]
    assert watch.waiters == {}
