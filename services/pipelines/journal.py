"""The pipeline workers' journal: what each token attempt sent that may not be sent twice.

A compacted topic (`skyjobs.pipeline-journal`) keyed like the tokens (run id + token id), so its
partition *p* holds the entries of the tokens of partition *p* of skyjobs.pipeline-work. The worker
that is given a work partition reads the journal's partition from its start (it is small: entries
are removed once their run is over) before it runs any of its tokens, then keeps it in memory and
writes through. This is what a faust table is; the work path reads Kafka with a plain consumer
(services/consumer.py), which faust's fetcher made slower (a millisecond a hop, measured here).

An entry: {"requested": [...]} once a token attempt is about to send an unsafe request (written and
acknowledged before the request goes), {"done": true} once the token's outcome is all in Kafka,
with "expires" (after the run's deadline: then a sweep removes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from events.topics import PIPELINE_JOURNAL

log = logging.getLogger(__name__)


def partition_of(key: str, partitions: int) -> int:
    """The partition the producers' default partitioner gives `key`."""
    return int((murmur2(key.encode()) & 0x7FFFFFFF) % partitions)


class JournalStore:
    def __init__(self, bootstrap: str, partitions: int, producer: AIOKafkaProducer) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.producer = producer
        self.entries: dict[int, dict[str, dict[str, Any]]] = {}  # partition -> key -> entry
        # A partition's tokens may be fetched while its journal is still being read (aiokafka fetches
        # a new assignment while the rebalance listener runs): they wait for this.
        self.ready: dict[int, asyncio.Event] = {}

    async def wait_ready(self, partition: int) -> None:
        await self.ready.setdefault(partition, asyncio.Event()).wait()

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(partition_of(key, self.partitions), {}).get(key)

    async def put(self, key: str, entry: dict[str, Any]) -> None:
        """Written and acknowledged by Kafka before it returns."""
        self.entries.setdefault(partition_of(key, self.partitions), {})[key] = entry
        await (await self.producer.send(PIPELINE_JOURNAL, orjson.dumps(entry), key=key.encode()))

    async def restore(self, partitions: list[int], timeout: float = 60) -> None:
        """Read the given partitions from their start to their current end."""
        if not partitions:
            return
        started = time.monotonic()
        for p in partitions:
            self.ready.setdefault(p, asyncio.Event()).clear()
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(PIPELINE_JOURNAL, p) for p in partitions]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            remaining = {tp: end for tp, end in ends.items() if end > 0}
            for tp in tps:
                self.entries[tp.partition] = {}
                consumer.seek(tp, 0)
            count = 0
            while remaining:
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"the journal's partitions {partitions} were not read within {timeout:g} s")
                fetched = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, records in fetched.items():
                    table = self.entries[tp.partition]
                    for record in records:
                        if record.offset >= remaining.get(tp, 0):
                            break
                        key = record.key.decode() if record.key else ""
                        if record.value is None:
                            table.pop(key, None)
                        else:
                            table[key] = orjson.loads(record.value)
                            count += 1
                    if records and records[-1].offset + 1 >= remaining.get(tp, 0):
                        remaining.pop(tp, None)
            log.info("journal: %d entries of partitions %s read in %.2f s", count, partitions,
                     time.monotonic() - started)
            for p in partitions:
                self.ready[p].set()
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    def forget(self, partitions: list[int]) -> None:
        for p in partitions:
            self.entries.pop(p, None)
            self.ready.pop(p, None)

    async def sweep(self, now: float | None = None) -> int:
        """Remove the entries of runs long over (tombstones, so compaction drops them)."""
        now = time.time() if now is None else now
        gone = 0
        for table in list(self.entries.values()):
            for key, entry in list(table.items()):
                if float(entry.get("expires", now)) < now:
                    del table[key]
                    await self.producer.send(PIPELINE_JOURNAL, None, key=key.encode())
                    gone += 1
        return gone


class Journal:
    """One token attempt's view of its entry (what the executor asks; services/pipelines/executor.py).

    One durable write per attempt, before its first unsafe request: from then on every unsafe request
    of the token may have been sent. Run again (deterministic up to there), the token meets first the
    request that was marked, so it fails where the lost worker may have sent something, and nowhere
    earlier; the later unsafe requests of the attempt need no write of their own.
    """

    def __init__(self, store: JournalStore, key: str, expires: float) -> None:
        self.store = store
        self.key = key
        self.expires = expires
        self.entry: dict[str, Any] = dict(store.get(key) or {})
        self.earlier = bool(self.entry.get("requested"))  # an earlier attempt sent unsafe requests
        self.touched = False
        self._marked: asyncio.Future[None] | None = None

    @property
    def done(self) -> bool:
        return bool(self.entry.get("done"))

    def requested(self, key: str) -> bool:
        return self.earlier

    async def record(self, key: str) -> None:
        if self._marked is None:
            self._marked = asyncio.ensure_future(self._write({"requested": [key]}))
        await asyncio.shield(self._marked)

    async def finish(self) -> None:
        """The token's outcome is in Kafka: a copy delivered again is skipped (only if it sent unsafe requests)."""
        if self.touched:
            await self._write({"done": True})

    async def _write(self, change: dict[str, Any]) -> None:
        self.touched = True
        self.entry.update(change, expires=self.expires)
        await self.store.put(self.key, dict(self.entry))
