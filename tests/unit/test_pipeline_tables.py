"""The workers' changelog tables in memory: writes, tombstones, what falls due (no Kafka: a fake producer)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from services import kafka
from services.kafka import partition_of
from services.pipelines.tables import ChangelogTable
from tests.conftest import eventually


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, bytes, int]] = []

    async def send(self, topic: str, value: Any, key: bytes, partition: int) -> asyncio.Future[None]:
        self.sent.append((topic, value, key, partition))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_writes_go_to_the_partition_of_the_run_and_only_the_front_is_swept() -> None:
    producer = Producer()
    table = ChangelogTable("unused:9092", "t", 8, producer,  # type: ignore[arg-type]
                           lambda key: partition_of(key.split(b"|", 1)[0], 8))
    table.set(b"run-a|end", b"{}", due=10.0)
    table.set(b"run-b|end", b"{}", due=20.0)
    table[b"run-a|end|part"] = b"p"
    assert table.due(15.0) == [b"run-a|end"] and table.due(5.0) == []
    assert table.pop(b"run-a|end") == b"{}" and table.due(15.0) == []
    await table.flush()
    assert {p for _, _, _, p in producer.sent} == {partition_of("run-a", 8), partition_of("run-b", 8)}
    assert producer.sent[-1][1] is None  # the removal is a tombstone
    table.forget([partition_of("run-b", 8)])
    assert table.due(100.0) == [] and table.get(b"run-b|end") is None


async def test_a_group_is_removed_without_touching_the_others() -> None:
    producer = Producer()
    table = ChangelogTable("unused:9092", "t", 8, producer,  # type: ignore[arg-type]
                           lambda key: partition_of(key.split(b"|", 1)[0], 8), None, lambda key: key.split(b"|", 1)[0])
    for run in (b"run-a", b"run-b"):
        table.set(run + b"|end", b"{}", due=10.0)
        table[run + b"|j#1"] = b"{}"
        table[run + b"|j#1|part"] = b"p"
    table.pop(b"run-a|j#1|part")
    table.pop_group(b"run-a")
    assert [table.get(run + b"|end") for run in (b"run-a", b"run-b")] == [None, b"{}"]
    assert table.due(100.0) == [b"run-b|end"] and set(table.groups) == {b"run-b"}
    await table.flush()
    assert sum(1 for _, value, key, _ in producer.sent if value is None and key.startswith(b"run-a")) == 3
    assert not table.is_ready(b"run-b|end")  # never read from Kafka: the sweep leaves it alone
    table.forget(list(range(8)))
    assert table.groups == {}


async def test_what_falls_due_comes_in_time_order_whatever_the_order_it_was_written_in() -> None:
    table = ChangelogTable("unused:9092", "t", 8, Producer(),  # type: ignore[arg-type]
                           lambda key: partition_of(key.split(b"|", 1)[0], 8))
    table.set(b"run-a|end", b"{}", due=60.0)  # an ended run, kept a minute
    table.set(b"run-b|j#1", b"{}", due=1.0)   # a later run's point, due sooner
    table.set(b"run-c|end", b"{}", due=2.0)
    table.schedule(b"run-c|end", 3.0)          # scheduled again: its first time no longer counts
    assert table.due(1.5) == [b"run-b|j#1"]
    assert table.due(2.5) == [b"run-b|j#1"]    # still due: nothing removed it
    table.pop(b"run-b|j#1")
    assert table.due(100.0) == [b"run-c|end", b"run-a|end"]
    table.pop(b"run-c|end")
    table.set(b"run-c|end", b"{}", due=3.0)    # removed, then written again with the same time
    assert table.due(100.0) == [b"run-c|end", b"run-a|end"]


class FlakyProducer(Producer):
    """Kafka refuses the first `failures` writes (as a broker away for longer than the request timeout)."""

    def __init__(self, failures: int, error: type[Exception] = KafkaTimeoutError) -> None:
        super().__init__()
        self.failures = failures
        self.error = error

    async def send(self, topic: str, value: Any, key: bytes, partition: int) -> asyncio.Future[None]:
        if self.failures:
            self.failures -= 1
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(self.error())
            return failed
        return await super().send(topic, value, key, partition)


async def test_a_refused_write_is_retried_with_the_value_the_key_has_by_then(monkeypatch: Any) -> None:
    monkeypatch.setattr(kafka, "RETRY_FIRST", 0.01)
    producer = FlakyProducer(failures=1)
    table = ChangelogTable("unused:9092", "t", 8, producer,  # type: ignore[arg-type]
                           lambda key: partition_of(key.split(b"|", 1)[0], 8))
    table[b"run-a|j"] = b"old"  # refused
    table[b"run-a|j"] = b"new"  # written
    assert await table.flush()
    assert [value for _, value, _, _ in producer.sent] == [b"new", b"new"]  # the retry did not bring "old" back
    producer.failures = 1
    assert await table.put(b"run-a|k", b"v", due=5.0) and producer.sent[-1][1:3] == (b"v", b"run-a|k")
    assert table.due(10.0) == [b"run-a|k"]


async def test_a_write_refused_until_its_partition_is_given_away_is_dropped(monkeypatch: Any) -> None:
    monkeypatch.setattr(kafka, "RETRY_FIRST", 0.01)
    producer = FlakyProducer(failures=10**6)
    table = ChangelogTable("unused:9092", "t", 8, producer,  # type: ignore[arg-type]
                           lambda key: partition_of(key.split(b"|", 1)[0], 8))
    table[b"run-a|j"] = b"v"
    table[b"run-b|j"] = b"v"
    writes = table.flush()
    await asyncio.sleep(0.05)
    table.forget(list(range(8)))  # a rebalance: the next owners read what reached Kafka
    assert await asyncio.wait_for(writes, timeout=5) is False and producer.sent == []


async def test_prune_drops_only_the_writes_kafka_has(monkeypatch: Any) -> None:
    monkeypatch.setattr(kafka, "RETRY_FIRST", 0.01)
    producer = FlakyProducer(failures=0)
    table = ChangelogTable("unused:9092", "t", 8, producer,  # type: ignore[arg-type]
                           lambda key: partition_of(key.split(b"|", 1)[0], 8))
    table[b"run-a|j"] = b"v"
    table.pop(b"run-a|j")  # a sweep's tombstone
    assert await asyncio.gather(*table.pending) == [True, True]
    producer.failures = 10**6
    table[b"run-b|j"] = b"v"  # not in Kafka yet

    async def refused_once() -> bool:
        return producer.failures < 10**6

    await eventually(refused_once, timeout=5, interval=0.001, what="the write's first attempt refused")
    table.prune()
    assert len(table.pending) == 1 and not table.pending[0].done()
    table.forget(list(range(8)))
    assert await asyncio.wait_for(table.flush(), timeout=5) is False  # what is left still tells its waiter


async def test_a_write_refused_for_its_size_is_not_retried(monkeypatch: Any) -> None:
    monkeypatch.setattr(kafka, "RETRY_FIRST", 0.01)
    producer = FlakyProducer(failures=1, error=MessageSizeTooLargeError)
    table = ChangelogTable("unused:9092", "t", 8, producer,  # type: ignore[arg-type]
                           lambda key: partition_of(key.split(b"|", 1)[0], 8))
    table[b"run-a|j"] = b"huge"
    with pytest.raises(MessageSizeTooLargeError):
        await asyncio.wait_for(table.flush(), timeout=5)
    assert producer.sent == []
