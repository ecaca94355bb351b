"""The API process's one tail of the event topics: Kafka consumers outside any group, from the end.

Every API process reads every partition of the event topics from the end it found at start, and
hands each fetched batch, in order per partition, to whoever follows it: the live streams
(stream.py), the add_task answers and queue counts (task_watch.py), the ends of jobs and runs
(end_watch.py, pipeline_watch.py). One tail instead of one per use: the records are fetched once.
The broker answers a fetch as soon as a record arrives, so a follower sees a record one fetch after
it was written, whatever `fetch_max_wait_ms` (the idle poll) is.

One consumer a topic, not one for all: aiokafka fetches without fetch sessions (KIP-227), so each
fetch names, and each answer carries, every partition of its consumer. With one consumer over the
8 event topics x 8 partitions, every event made the broker build, and this process decode, an
answer of 64 partitions; now it is the 8 of the event's topic (BENCHMARKS.md, stop 14).

Topics that only the live streams read (`on_demand`: a pipeline's step events, say) are read only
while someone streams (`want` / `unwant`): from the end they have then. Otherwise each of their
events would cost this process a fetch answer to read and a fetch request to write, for nobody
(~0.4 ms of a pipeline step's overhead, BENCHMARKS.md, stop 15).

    tail = EventTail(bootstrap, topics, on_demand)
    await tail.start()
    stop = tail.follow(lambda batch: ...)          # every batch: {(topic, partition): [records]}
    ...
    stop()

Followers are called synchronously on the tail's task: they must not block (queue work for later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from services.kafka import topic_reader

log = logging.getLogger(__name__)

Position = tuple[str, int]
Batch = dict[Position, list[Any]]  # (topic, partition) -> aiokafka ConsumerRecords, in offset order
Follower = Callable[[Batch], None]


class EventTail:
    def __init__(self, bootstrap: str, topics: tuple[str, ...], on_demand: tuple[str, ...] = ()) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.on_demand = on_demand  # read only while wanted (module docstring)
        self._demand = 0
        self._waking = asyncio.Lock()
        self.order: list[Position] = []  # every partition, sorted: the shape of a position vector
        self.positions: dict[Position, int] = {}  # the next offset of every partition, once handed on
        self._followers: list[Follower] = []
        self._consumers: list[AIOKafkaConsumer] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        started = await asyncio.gather(*(self._start_one(topic, deadline) for topic in self.topics),
                                       return_exceptions=True)
        self._consumers = [c for c in started if isinstance(c, AIOKafkaConsumer)]
        failed = [exc for exc in started if isinstance(exc, BaseException)]
        if failed:
            await self.stop()
            raise failed[0]
        self.order = sorted(self.positions)
        for consumer in self._demanded():
            consumer.pause(*consumer.assignment())
        self._tasks = [asyncio.ensure_future(self._run(consumer)) for consumer in self._consumers]

    def _demanded(self) -> list[AIOKafkaConsumer]:
        return [c for c in self._consumers if any(tp.topic in self.on_demand for tp in c.assignment())]

    async def _demanded_ends(self) -> list[tuple[AIOKafkaConsumer, dict[TopicPartition, int]]]:
        """The on-demand topics' ends in Kafka now, with the consumer of each."""
        demanded = self._demanded()
        ends = await asyncio.gather(*(c.end_offsets(sorted(c.assignment())) for c in demanded))
        return list(zip(demanded, ends, strict=True))

    async def want(self) -> bool:
        """Read the on-demand topics too, until as many `unwant` calls: on the first (True), from their end
        now (`positions` jump there; what was written before is skipped, nobody wanted it)."""
        async with self._waking:
            woke = self._demand == 0
            if woke:
                # No await after the ends are read: aiokafka drops what a paused partition had fetched,
                # and what a seek makes stale, so nothing from before the ends is handed on.
                for consumer, found in await self._demanded_ends():
                    for tp, end in found.items():
                        if end > self.positions[(tp.topic, tp.partition)]:
                            consumer.seek(tp, end)
                            self.positions[(tp.topic, tp.partition)] = end
                    consumer.resume(*consumer.assignment())
            self._demand += 1
            return woke

    def unwant(self) -> None:
        self._demand -= 1
        if self._demand == 0:
            for consumer in self._demanded():
                consumer.pause(*consumer.assignment())

    async def _start_one(self, topic: str, deadline: float) -> AIOKafkaConsumer:
        async def at_the_end(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
            # Explicit offsets, not seek_to_end (resolved lazily at the first fetch): every record
            # written from now on is after them.
            for tp, end in (await consumer.end_offsets(tps)).items():
                consumer.seek(tp, end)
                self.positions[(tp.topic, tp.partition)] = end

        return await topic_reader(self.bootstrap, topic, deadline, at_the_end, fetch_max_wait_ms=500,
                                  max_partition_fetch_bytes=4 * 1024 * 1024)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for consumer in self._consumers:
            with contextlib.suppress(Exception):
                await consumer.stop()

    def follow(self, follower: Follower) -> Callable[[], None]:
        """Call `follower` with every batch from now on; returns the function that stops it."""
        self._followers.append(follower)
        return lambda: self._followers.remove(follower)

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                fetched = await consumer.getmany(timeout_ms=1000, max_records=5000)
            except KafkaError as exc:
                log.warning("event tail: %r; retrying", exc)
                await asyncio.sleep(1)
                continue
            batch = {(tp.topic, tp.partition): records for tp, records in fetched.items() if records}
            if batch:
                self.hand_on(batch)

    async def ends(self) -> dict[Position, int]:
        """Every partition's end as far as this process can tell: where it has read to, and for the
        on-demand topics it is not reading, their end in Kafka now."""
        ends = dict(self.positions)
        if self._demand == 0:
            for _, found in await self._demanded_ends():
                ends |= {(tp.topic, tp.partition): end for tp, end in found.items()}
        return ends

    def hand_on(self, batch: Batch) -> None:
        """Advance the positions past `batch` and give it to the followers."""
        for tp, records in batch.items():
            self.positions[tp] = records[-1].offset + 1
        for follower in list(self._followers):
            try:
                follower(batch)
            except Exception:
                log.exception("event tail: a follower failed")
