"""A consumer whose messages are acknowledged out of order and committed in order.

The router's `task.submitted` and the executors' `job.submitted` messages are acknowledged when
their task or job ends, in whatever order they end; the committed offset of a partition is its
first message not acknowledged yet. A process that dies leaves its unfinished work (and the
messages after it, up to the last commit) to the next owner of the partition, which first reads up
to the end the partition had when it got it (`on_assigned` gets those ends) so that work finished
meanwhile is not done twice.

Why not a faust agent: measured here, faust 0.15's fetcher (fetch_max_wait_ms fixed at 1500 and
partitions dropped from fetching under buffer pressure) stalled deliveries for 1.5 s once about 60
tasks were in flight, and added ~20 ms of queueing at 400 tasks/s. This plain aiokafka consumer
drains every fetch at once and long-polls for at most `fetch_max_wait_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

COMMIT_INTERVAL = 0.5


@dataclass
class _Acks:
    """Offsets of one partition received in order, and those acknowledged (in any order)."""

    received: deque[int] = field(default_factory=deque)
    acked: set[int] = field(default_factory=set)
    next_offset: int | None = None  # what to commit: the first offset not acknowledged yet

    def ack(self, offset: int) -> None:
        self.acked.add(offset)

    def committable(self) -> int | None:
        while self.received and self.received[0] in self.acked:
            done = self.received.popleft()
            self.acked.discard(done)
            self.next_offset = done + 1
        if self.received:
            self.next_offset = self.received[0]
        return self.next_offset


@dataclass
class Message:
    """One record, with the callback that acknowledges it."""

    tp: TopicPartition
    offset: int
    value: bytes
    acks: _Acks

    def ack(self) -> None:
        self.acks.ack(self.offset)


class Handler(Protocol):
    async def on_assigned(self, tps: list[Any], ends: dict[Any, int]) -> None: ...

    def on_revoked(self, tps: set[Any]) -> None: ...

    async def on_message(self, message: Any) -> None: ...


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: AckingConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.owner.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.owner.assigned(set(assigned))


class AckingConsumer:
    """Feeds every message of `topic` (partitions shared by `group`) to the handler, in order per partition."""

    def __init__(self, bootstrap: str, topic: str, group: str, handler: Handler, fetch_max_wait_ms: int = 50,
                 session_timeout: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.handler = handler
        self.acks: dict[TopicPartition, _Acks] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest",
            fetch_max_wait_ms=fetch_max_wait_ms, max_poll_records=1000,
            session_timeout_ms=int(session_timeout * 1000), heartbeat_interval_ms=int(session_timeout * 1000 / 5),
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )

    def holds(self, message: Message) -> bool:
        """Whether `message`'s partition is still this consumer's, in the assignment it came with."""
        return self.acks.get(message.tp) is message.acks

    async def revoked(self, tps: set[TopicPartition]) -> None:
        await self.commit()
        self.handler.on_revoked(tps)
        for tp in tps:
            self.acks.pop(tp, None)
            self.committed.pop(tp, None)

    async def assigned(self, tps: set[TopicPartition]) -> None:
        mine = sorted(tps)
        ends: dict[Any, int] = {}
        try:
            ends = dict(await self.consumer.end_offsets(mine))
        except KafkaError as exc:  # without the ends, replayed tasks run at once (at-least-once still)
            log.warning("could not read the end offsets of %s: %r", self.topic, exc)
        for tp in mine:
            self.acks[tp] = _Acks()
        await self.handler.on_assigned(mine, ends)

    async def commit(self) -> None:
        offsets = {}
        for tp, acks in self.acks.items():
            offset = acks.committable()
            if offset is not None and offset != self.committed.get(tp):
                offsets[tp] = offset
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
            self.committed.update(offsets)
        except KafkaError as exc:  # a rebalance under way: the next owner replays a little more
            log.warning("committing %s offsets failed: %r", self.topic, exc)

    async def run(self, started: Callable[[], Awaitable[None]] | None = None) -> None:
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))
        while True:
            try:
                await self.consumer.start()
                break
            except KafkaError as exc:
                log.warning("consumer of %s could not start (%r); retrying", self.topic, exc)
                await asyncio.sleep(1)
        committer = asyncio.ensure_future(self._commit_forever())
        try:
            if started is not None:
                await started()
            while True:
                try:
                    batch = await self.consumer.getmany(timeout_ms=1000)
                except KafkaError as exc:  # the broker went away: aiokafka reconnects; anything else crashes
                    log.warning("consumer of %s: %r; retrying", self.topic, exc)  # its process, and the supervisor restarts it
                    await asyncio.sleep(1)
                    continue
                for tp, records in batch.items():
                    acks = self.acks.get(tp)
                    if acks is None:  # revoked while the batch was on its way
                        continue
                    for record in records:
                        acks.received.append(record.offset)
                        await self.handler.on_message(Message(tp, record.offset, record.value, acks))
        finally:
            committer.cancel()
            with contextlib.suppress(Exception):
                await self.commit()
            await self.consumer.stop()

    async def _commit_forever(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_INTERVAL)
            await self.commit()
