"""A token that fails in the worker is run again, not acknowledged as if done, and what a join sends
is sent again until Kafka has it (no Kafka: the consumer is never started; its messages and the
refusals are made here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from events.base import utcnow
from events.codec import decode_event
from events.pipelines import Arrive, Caller, ContinueRun, RunEnded
from events.topics import PIPELINE_JOINS, PIPELINE_RUNS
from services import kafka
from services.config import Config
from services.consumer import Message as Record
from services.consumer import _Acks
from services.kafka import partition_of
from services.pipelines import agents
from services.pipelines.agents import WorkConsumer
from services.pipelines.flow import Settings, root_token
from services.pipelines.messages import Message
from services.pipelines.spec import parse
from services.pipelines.tables import ChangelogTable
from tests.conftest import eventually


class Worker:
    def __init__(self, failures: int) -> None:
        self.config = SimpleNamespace(kafka_bootstrap="unused:9092")
        self.running: set[str] = set()
        self.slots = asyncio.Semaphore(10)
        self.failures = failures
        self.calls = 0

    async def on_token(self, command: ContinueRun, partition: int) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("Kafka timed out")


def command(deadline: float) -> ContinueRun:
    return SimpleNamespace(token=SimpleNamespace(deadline=deadline))  # type: ignore[return-value]  # all _run reads


MADE: list[WorkConsumer] = []


async def until(condition: Callable[[], bool], what: str) -> None:
    """A bounded wait for what the tasks under test do meanwhile."""
    async def probe() -> bool:
        return condition()

    await eventually(probe, timeout=5, interval=0.001, what=what)


def consumer(worker: Worker) -> tuple[WorkConsumer, Record]:
    work = WorkConsumer(worker, None)  # type: ignore[arg-type]
    MADE.append(work)
    tp = TopicPartition("skyjobs.pipeline-work", 0)
    acks = _Acks()
    acks.received.append(7)
    work.acks[tp] = acks
    return work, Record(tp, 7, b"", acks)


@pytest.fixture(autouse=True)
async def quick_retries(monkeypatch: Any) -> AsyncIterator[None]:
    monkeypatch.setattr(agents, "TOKEN_RETRY_FIRST", 0.01)
    monkeypatch.setattr(agents, "TOKEN_RETRY_LAST", 0.02)
    yield
    while MADE:
        await MADE.pop().consumer.stop()  # never started: nothing but its resources to close


async def test_a_token_that_failed_is_run_again_and_acknowledged_once_it_succeeds() -> None:
    worker = Worker(failures=2)
    work, message = consumer(worker)
    await worker.slots.acquire()
    await work._run(command(time.time() + 60), message, "run:r")
    assert worker.calls == 3
    assert message.acks.committable() == 8  # acknowledged: the commit passes it
    assert worker.slots._value == 10 and not worker.running


async def test_a_token_past_its_deadline_is_not_run_again() -> None:
    worker = Worker(failures=100)
    work, message = consumer(worker)
    await worker.slots.acquire()
    await work._run(command(time.time() + 0.05), message, "run:r")
    assert 1 <= worker.calls <= 5  # stopped at the deadline: the sweep ends the run (504)
    assert message.acks.committable() == 8


async def test_a_token_of_a_partition_given_away_is_left_to_its_next_owner() -> None:
    worker = Worker(failures=100)
    work, message = consumer(worker)
    await worker.slots.acquire()
    run = asyncio.ensure_future(work._run(command(time.time() + 60), message, "run:r"))
    await until(lambda: worker.calls == 1, "the first attempt")
    work.acks.pop(message.tp)  # the rebalance took the partition
    await asyncio.wait_for(run, 1)
    assert worker.calls == 1


class RefusingSends:
    """Worker.send as when Kafka is away for a while: the first `refusals` sends fail."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.error: type[Exception] = KafkaTimeoutError
        self.sent: list[tuple[str, str, bytes]] = []

    async def __call__(self, topic: str, key: str, value: bytes, audit: bool = False) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.refusals:
            self.refusals -= 1
            done.set_exception(self.error())
        else:
            self.sent.append((topic, key, value))
            done.set_result(None)
        return done


async def test_what_a_join_sends_is_sent_again_until_kafka_has_it(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(kafka, "RETRY_FIRST", 0.01)
    worker = agents.Worker(Config(data_dir=tmp_path), Settings())
    sends = RefusingSends(refusals=3)
    monkeypatch.setattr(worker, "send", sends)
    assert await (await worker.send_surely("skyjobs.pipeline-work", "run:r", b"token", lambda: True)) is True
    assert sends.sent == [("skyjobs.pipeline-work", "run:r", b"token")]
    sends.refusals = 10**6
    owned = [True]
    delivery = await worker.send_surely("skyjobs.pipeline-runs", "run", b"end", lambda: owned[0])
    await until(lambda: sends.refusals <= 10**6 - 2, "a second attempt")
    owned[0] = False  # a rebalance: the next owner replays the arrival, which was not acknowledged
    assert await asyncio.wait_for(delivery, 5) is False
    sends.refusals, sends.error = 1, MessageSizeTooLargeError  # what no retry changes is not retried
    with pytest.raises(MessageSizeTooLargeError):
        await (await worker.send_surely("skyjobs.pipeline-work", "run:r", b"huge", lambda: True))
    await worker.stop()


class TableProducer:
    """The joins table's producer: every write reaches Kafka at once."""

    async def send(self, topic: str, value: Any, key: bytes, partition: int) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_a_join_that_fails_in_the_worker_ends_its_run_with_the_reason(tmp_path: Path, monkeypatch: Any) -> None:
    worker = agents.Worker(Config(data_dir=tmp_path), Settings())
    sends = RefusingSends(refusals=0)
    monkeypatch.setattr(worker, "send", sends)
    joins = ChangelogTable("unused:9092", PIPELINE_JOINS, 8, TableProducer(),  # type: ignore[arg-type]
                           lambda key: partition_of(key.split(b"|", 1)[0], 8), agents.point_due,
                           lambda key: key.split(b"|", 1)[0])
    raw_spec = b'[["GET http://127.0.0.1:9/a", "GET http://127.0.0.1:9/b"], "jsonObject"]'
    settings = Settings()
    token = root_token(parse(orjson.loads(raw_spec)), Message(), settings)
    base = {"pipeline": "p", "spec": msgspec.Raw(raw_spec), "caller": Caller(method="GET", base_path="/p/p"),
            "deadline": time.time() + 60, "route": None, "label": "pipeline-run-r"}
    wire = await worker.bodies.token_to_wire(token, base, "alice")
    arrive = Arrive(command_id="c", stream_id="run-1", issued_at=utcnow(), point="^#1", kind="jsonObject", level=1,
                    outcome="message", token=wire)
    await worker.fail_arrival(arrive, RuntimeError("its body is no longer stored"), joins)
    ended = [decode_event(value) for topic, _, value in sends.sent if topic == PIPELINE_RUNS]
    assert len(ended) == 1 and isinstance(ended[0], RunEnded)
    assert ended[0].status == 500 and ended[0].state == "failed"
    assert ended[0].error and "joiner 1 failed in the pipeline worker: its body is no longer stored" in ended[0].error
    await worker.fail_arrival(arrive, RuntimeError("again"), joins)  # the run is over: nothing more
    assert len([t for t, _, _ in sends.sent if t == PIPELINE_RUNS]) == 1
    await worker.stop()
