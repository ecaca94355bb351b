"""Tables kept in compacted topics: what a faust table is, read by the plain consumers of the workers.

    table = ChangelogTable(bootstrap, "skyjobs.pipeline-joins", partitions, producer, partition_of_key)
    await table.restore([0, 3])         # a partition given to this worker: read it from the start
    table[b"key"] = b"value"            # in memory at once; to Kafka now, `flush()` waits for it
    await table.flush()
    await table.put(b"key", b"value")   # the same, waiting for this one write

Writes are retried until Kafka has them, for as long as the worker has their partition.

A table's partition *p* holds the state of the messages of partition *p* of the topic the worker
reads (`partition_of_key` maps a key to it), so the worker given *p* reads *p* of the table before
it handles any of *p*'s messages (`wait_ready`). Removing a key writes a tombstone, which
compaction later drops. The pipeline workers read their topics with plain aiokafka consumers
(services/consumer.py): faust's fetcher, which runs the consumer in a thread of its own, added
8 ms at p50 and 100 ms at p90 to every hop through a faust agent here (BENCHMARKS.md), and a faust
table can only be fed by a faust agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.due_times import DueTimes
from services.kafka import until_acknowledged

log = logging.getLogger(__name__)

class ChangelogTable:
    def __init__(self, bootstrap: str, topic: str, partitions: int, producer: AIOKafkaProducer,
                 partition_of_key: Callable[[bytes], int],
                 expiry_of: Callable[[bytes, bytes], float | None] | None = None,
                 group_of: Callable[[bytes], bytes] | None = None) -> None:
        self.bootstrap = bootstrap
        self.group_of = group_of  # a key's group (a run's keys, say): `pop_group` needs no scan
        self.groups: dict[bytes, set[bytes]] = {}
        self.expiry_of = expiry_of  # when a restored entry falls due (`due`)
        self.deadlines = DueTimes[float]()  # keys with a time: a sweep looks only at what is due
        self.topic = topic
        self.partitions = partitions
        self.producer = producer
        self.partition_of_key = partition_of_key
        self.data: dict[int, dict[bytes, bytes]] = {}  # partition -> key -> value
        # A partition's messages may be fetched while its table is still being read (aiokafka fetches
        # a new assignment while the rebalance listener runs): they wait for this.
        self.ready: dict[int, asyncio.Event] = {}
        self.pending: list[Any] = []  # sends not yet awaited (`flush`)

    # --- a mapping of bytes to bytes ---------------------------------------------------------------

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        return self.data.get(self.partition_of_key(key), {}).get(key, default)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._send(key, value, self._keep(key, value))

    async def put(self, key: bytes, value: bytes, due: float | None = None) -> bool:
        """Write `key` and wait until Kafka has it (False: its partition was given away meanwhile)."""
        partition = self._keep(key, value)
        if due is not None:
            self.schedule(key, due)
        return await self._write(key, value, partition)

    def _keep(self, key: bytes, value: bytes) -> int:
        partition = self.partition_of_key(key)
        self.data.setdefault(partition, {})[key] = value
        self._grouped(key)
        return partition

    def set(self, key: bytes, value: bytes, due: float | None = None) -> None:
        """Write `key`; with `due`, it is one of `due()`'s keys from that time on."""
        self[key] = value
        if due is not None:
            self.schedule(key, due)

    def schedule(self, key: bytes, due: float) -> None:
        """`key` is one of `due()`'s keys from `due` on (until it is removed or scheduled again)."""
        self.deadlines.set(key, due)

    def due(self, now: float) -> list[bytes]:
        """Keys whose time has come, earliest first (they stay due until removed or scheduled again)."""
        out = self.deadlines.pop_due(now)
        for key in out:
            self.deadlines.retry(key, now)
        return out

    def pop(self, key: bytes, default: bytes | None = None) -> bytes | None:
        partition = self.partition_of_key(key)
        self.deadlines.discard(key)
        value = self.data.get(partition, {}).pop(key, None)
        if value is None:
            return default
        self._ungrouped(key)
        self._send(key, None, partition)
        return value

    def pop_group(self, group: bytes) -> None:
        """Remove every key of `group`."""
        for key in self.groups.pop(group, set()):
            self.pop(key)

    def _grouped(self, key: bytes) -> None:
        if self.group_of is not None:
            self.groups.setdefault(self.group_of(key), set()).add(key)

    def _ungrouped(self, key: bytes) -> None:
        if self.group_of is not None:
            group = self.group_of(key)
            keys = self.groups.get(group)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.groups[group]

    def _send(self, key: bytes, value: bytes | None, partition: int) -> None:
        self.pending.append(asyncio.ensure_future(self._write(key, value, partition)))

    async def _write(self, key: bytes, value: bytes | None, partition: int) -> bool:
        """Until Kafka has the key: True then, False if its partition was given away meanwhile (its
        next owner reads what did reach Kafka and handles again what was not acknowledged).

        A write that failed is retried with the key's value as it is by then, never the older one it
        had: a retry must not undo a later write of the same key that did reach Kafka."""
        return await until_acknowledged(
            lambda: self._produce(key, self.data[partition].get(key), partition),
            f"writing {key[:80]!r} to {self.topic}", ours=lambda: partition in self.data,
            first=self._produce(key, value, partition))

    async def _produce(self, key: bytes, value: bytes | None, partition: int) -> None:
        await (await self.producer.send(self.topic, value, key=key, partition=partition))

    def owns(self, key: bytes) -> bool:
        """Whether the partition of `key` is this worker's (read, or being read)."""
        return self.partition_of_key(key) in self.data

    def prune(self) -> None:
        """Drop the writes Kafka has (a waiter would learn nothing from them): the sweeps' writes
        would otherwise stay in `pending` until the next arrival takes it."""
        self.pending = [send for send in self.pending if not (send.done() and not send.cancelled()
                                                               and send.exception() is None and send.result())]

    async def flush(self) -> bool:
        """Wait until Kafka has every write made so far; False if a partition written to was given away."""
        pending, self.pending = self.pending, []
        written = True
        for send in pending:
            written = await send and written
        return written

    # --- partitions ---------------------------------------------------------------------------------

    def is_ready(self, key: bytes) -> bool:
        """Whether the partition of `key` is read (a partition being read may still change its keys)."""
        event = self.ready.get(self.partition_of_key(key))
        return event is not None and event.is_set()

    async def wait_ready(self, partition: int) -> None:
        await self.ready.setdefault(partition, asyncio.Event()).wait()

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
            tps = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            remaining = {tp: end for tp, end in ends.items() if end > 0}
            for tp in tps:
                self.data[tp.partition] = {}
                consumer.seek(tp, 0)
            while remaining:
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"{self.topic} {partitions} was not read within {timeout:g} s")
                fetched = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, records in fetched.items():
                    table = self.data[tp.partition]
                    for record in records:
                        if record.offset >= remaining.get(tp, 0):
                            break
                        if record.value is None:
                            if table.pop(record.key, None) is not None:
                                self._ungrouped(record.key)
                            self.deadlines.discard(record.key)
                        else:
                            table[record.key] = record.value
                            self._grouped(record.key)
                            at = self.expiry_of(record.key, record.value) if self.expiry_of else None
                            if at is not None:
                                self.schedule(record.key, at)
                    if records and records[-1].offset + 1 >= remaining.get(tp, 0):
                        remaining.pop(tp, None)
            log.info("%s: %d entries of partitions %s read in %.2f s", self.topic,
                     sum(len(self.data[p]) for p in partitions), partitions, time.monotonic() - started)
            for p in partitions:
                self.ready[p].set()
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def restore_retrying(self, partitions: list[int]) -> None:
        """`restore` until it succeeds: the partitions' messages wait for it, whatever it takes."""
        while True:
            try:
                await self.restore(partitions)
                return
            except Exception as exc:
                log.warning("reading %s %s failed (%r); retrying", self.topic, partitions, exc)
                await asyncio.sleep(1)

    def forget(self, partitions: list[int]) -> None:
        for p in partitions:
            for key in self.data.pop(p, {}):
                self.deadlines.discard(key)
                self._ungrouped(key)
            self.ready.pop(p, None)
