"""The executor process's dispatcher with Kafka and the processes replaced by fakes: the replay gate,
stops, acknowledgements."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from events.base import new_id, utcnow
from events.codec import encode
from events.jobs import JobCancelRequested, JobStarted, JobSubmitted, JobSucceeded
from events.topics import JOB_EVENTS
from services.config import Config
from services.consumer import Message, _Acks
from services.jobs.dispatcher import Dispatcher
from services.jobs.lifecycle import Job
from tests.conftest import eventually

TP = TopicPartition(JOB_EVENTS, 0)


class FakeExecutor:
    """Runs nothing: a job 'runs' until `finish` is called."""

    executor_id = "me"

    def __init__(self) -> None:
        self.started: list[str] = []
        self.stopped: dict[str, str] = {}
        self.done: dict[str, asyncio.Event] = {}

    async def run(self, job: Job) -> None:
        self.started.append(job.job_id)
        self.done[job.job_id] = asyncio.Event()
        await self.done[job.job_id].wait()

    def stop(self, job_id: str, reason: str) -> None:
        self.stopped[job_id] = reason
        self.finish(job_id)

    def finish(self, job_id: str) -> None:
        self.done[job_id].set()


def make() -> tuple[Dispatcher, FakeExecutor, _Acks]:
    fake = FakeExecutor()
    dispatcher = Dispatcher(Config(executor_slots=2), fake, bus=None)  # type: ignore[arg-type]
    return dispatcher, fake, _Acks()


def meta(job_id: str, sequence: int) -> dict[str, Any]:
    return {"event_id": new_id(), "stream_id": job_id, "sequence": sequence, "occurred_at": utcnow(),
            "correlation_id": job_id}


def submitted(job_id: str) -> JobSubmitted:
    return JobSubmitted(**meta(job_id, 1), user_id="u", command="true")


def started(job_id: str, by: str) -> JobStarted:
    return JobStarted(**meta(job_id, 2), executor_id=by, attempt=1)


async def feed(dispatcher: Dispatcher, acks: _Acks, offset: int, event: Any) -> None:
    acks.received.append(offset)
    await dispatcher.on_message(Message(TP, offset, encode(event), acks))


async def test_replayed_jobs_that_finished_meanwhile_are_not_run_and_queued_ones_are() -> None:
    dispatcher, fake, acks = make()
    done_job, queued_job = new_id(), new_id()
    await dispatcher.on_assigned([TP], {TP: 4})
    await feed(dispatcher, acks, 0, submitted(done_job))
    await feed(dispatcher, acks, 1, submitted(queued_job))
    assert fake.started == []  # nothing runs before the partition's end at assignment is read
    await feed(dispatcher, acks, 2, started(done_job, "other"))
    await feed(dispatcher, acks, 3, JobSucceeded(**meta(done_job, 3), exit_code=0))
    await eventually(lambda: _true(fake.started == [queued_job]), timeout=2, what="the queued job to run")
    assert acks.committable() == 1  # the finished job's messages are acknowledged, the queued one is not


async def test_a_job_started_by_another_executor_is_stopped_here() -> None:
    dispatcher, fake, acks = make()
    job_id = new_id()
    await dispatcher.on_assigned([TP], {TP: 0})
    await feed(dispatcher, acks, 0, submitted(job_id))
    await eventually(lambda: _true(fake.started == [job_id]), timeout=2, what="the job to run")
    await feed(dispatcher, acks, 1, started(job_id, "other"))
    assert "runs on other" in fake.stopped[job_id]


async def test_cancel_stops_the_running_job_and_its_end_acknowledges_it() -> None:
    dispatcher, fake, acks = make()
    job_id = new_id()
    await dispatcher.on_assigned([TP], {TP: 0})
    await feed(dispatcher, acks, 0, submitted(job_id))
    await eventually(lambda: _true(fake.started == [job_id]), timeout=2, what="the job to run")
    await feed(dispatcher, acks, 1, started(job_id, "me"))
    assert job_id not in fake.stopped
    await feed(dispatcher, acks, 2, JobCancelRequested(**meta(job_id, 3), reason="by user"))
    assert fake.stopped[job_id] == "by user"
    assert acks.committable() == 0  # not ended yet: a new owner would still see it
    await feed(dispatcher, acks, 3, JobSucceeded(**meta(job_id, 4), exit_code=0))
    assert acks.committable() == 4


async def test_slots_bound_the_jobs_running_at_once() -> None:
    dispatcher, fake, acks = make()
    ids = [new_id() for _ in range(3)]
    await dispatcher.on_assigned([TP], {TP: 0})
    for offset, job_id in enumerate(ids):
        await feed(dispatcher, acks, offset, submitted(job_id))
    await eventually(lambda: _true(len(fake.started) == 2), timeout=2, what="two jobs to run")
    fake.finish(ids[0])
    await eventually(lambda: _true(fake.started == ids), timeout=2, what="the third job to run")


async def _true(value: bool) -> bool:
    return value
