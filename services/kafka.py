"""Kafka adapters: topic set-up, the command producer used by the API and the executors' side."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    UnknownProducerId,
)
from aiokafka.partitioner import murmur2

from events import cloudevents
from events.topics import TOPICS

log = logging.getLogger(__name__)


def partition_of(key: str | bytes, partitions: int) -> int:
    """The partition the producers' default partitioner gives `key`."""
    raw = key.encode() if isinstance(key, str) else key
    return int((murmur2(raw) & 0x7FFFFFFF) % partitions)


Place = Callable[[AIOKafkaConsumer, list[TopicPartition]], Awaitable[None]]


async def topic_reader(bootstrap: str, topic: str, deadline: float, place: Place, **settings: Any) -> AIOKafkaConsumer:
    """A started consumer without a group, given every partition of `topic` and positioned by `place`
    (seek to the start or the end); tried again until `deadline` while Kafka is not there."""
    while True:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **settings)
        try:
            await consumer.start()
            await place(consumer, await _all_partitions(consumer, topic, deadline))
            return consumer
        except KafkaError:
            await consumer.stop()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _all_partitions(consumer: AIOKafkaConsumer, topic: str, deadline: float) -> list[TopicPartition]:
    consumer.subscribe([topic])  # without a group: every partition is assigned to it
    while True:
        assigned = [tp for tp in consumer.assignment() if tp.topic == topic]
        if assigned:
            return sorted(assigned)
        if time.monotonic() > deadline:
            raise KafkaError(f"topic {topic} has no partitions (run `skyjobs setup`)")
        await asyncio.sleep(0.05)


_PRODUCER_BROKEN = (OutOfOrderSequenceNumber, ProducerFenced, UnknownProducerId, InvalidProducerEpoch)


class BrokerUnavailable(RuntimeError):
    """Kafka did not acknowledge in time: nothing was accepted; the caller may retry."""

    retryable = True


async def create_topics(bootstrap: str, partitions: int, timeout: float = 60) -> None:
    """Create every skyjobs topic that is missing (idempotent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await admin.start()
            break
        except KafkaError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
    try:
        existing = set(await admin.list_topics())
        brokers = len((await admin.describe_cluster())["brokers"])
        replication = min(3, brokers)  # 3 copies on a real cluster, 1 on a single local broker
        new = []
        for spec in TOPICS:
            if spec.name in existing:
                continue
            config = {"retention.ms": str(spec.retention_ms if spec.retention_ms is not None else -1)}
            if spec.compacted:
                config["cleanup.policy"] = "compact"
            new.append(NewTopic(spec.name, num_partitions=partitions, replication_factor=replication, topic_configs=config))
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics %s", ", ".join(t.name for t in new))
    finally:
        await admin.close()


class CommandBus:
    """Produces commands keyed by their stream id: idempotent producer, acks from all replicas."""

    def __init__(self, bootstrap: str, timeout: float, linger_ms: int = 1) -> None:
        self.timeout = timeout
        self._settings = {
            "bootstrap_servers": bootstrap,
            "enable_idempotence": True,
            "acks": "all",
            "linger_ms": linger_ms,
            "request_timeout_ms": int(timeout * 1000),
            "max_batch_size": 256 * 1024,
        }
        self.producer = AIOKafkaProducer(**self._settings)
        self._renewing = asyncio.Lock()

    async def start(self, timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await self.producer.start()
                return
            except KafkaError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        await self.producer.stop()

    async def send(self, topic: str, key: str, value: bytes) -> None:
        """Returns once Kafka has acknowledged; raises BrokerUnavailable otherwise."""
        try:
            future = await asyncio.wait_for(
                self.producer.send(topic, value, key=key.encode(), headers=cloudevents.headers(value)), self.timeout)
            await asyncio.wait_for(future, self.timeout)
        except _PRODUCER_BROKEN as exc:
            await self._renew(self.producer)
            raise BrokerUnavailable(f"Kafka refused the producer ({exc!r}); it was replaced, try again") from exc
        except (TimeoutError, KafkaError) as exc:
            raise BrokerUnavailable(f"Kafka did not acknowledge within {self.timeout:g} s: {exc!r}") from exc

    async def _renew(self, broken: AIOKafkaProducer) -> None:
        """A fatal idempotence error (seen after a broker restart) ends aiokafka's sender for good:
        every later send would fail. A new producer gets a new producer id and starts afresh."""
        async with self._renewing:
            if self.producer is not broken:
                return  # another send renewed it already
            log.warning("replacing the Kafka producer after a fatal error")
            with contextlib.suppress(Exception):
                await broken.stop()
            self.producer = AIOKafkaProducer(**self._settings)
            await self.start()


RETRY_FIRST, RETRY_LAST = 0.2, 5.0  # seconds before the first retry of a refused send, and at most
FINAL = (MessageSizeTooLargeError, RecordTooLargeError)  # refusals no retry can change: raised at once


def _always() -> bool:
    return True


async def until_acknowledged(send: Callable[[], Awaitable[Any]], what: str, ours: Callable[[], bool] = _always,
                             first: Awaitable[Any] | None = None) -> bool:
    """Await `send()` (or `first`, an attempt already made) until Kafka acknowledges: True then. A
    refused attempt (Kafka away for longer than a request's timeout, say) is made again after
    RETRY_FIRST, doubling to RETRY_LAST, for as long as `ours()`: False once it is not (a partition
    given to another worker, which handles again what was not acknowledged). What no retry can
    change (FINAL) is raised."""
    delay = RETRY_FIRST
    while True:
        try:
            await (first if first is not None else send())
            return True
        except (asyncio.CancelledError, *FINAL):
            raise
        except Exception as exc:
            log.warning("%s failed (%r); retrying in %.1f s", what, exc, delay)
        first = None
        await asyncio.sleep(delay)
        delay = min(RETRY_LAST, delay * 2)
        if not ours():
            return False
