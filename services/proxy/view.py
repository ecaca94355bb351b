"""The registry as every process sees it: `skyjobs.service-events` folded in memory.

Each reader (the router, the API) consumes every partition from the beginning, outside any
consumer group, so each holds the whole registry. `catch_up()` waits until everything Kafka holds
right now is applied: what a reader needs before it decides on the registry (the router's
registry agent) or answers "no such service" (the API).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from events.codec import DecodeError, decode_event
from events.services import ServiceEvent
from events.topics import SERVICE_EVENTS
from services.kafka import topic_reader
from services.proxy import registry as registry_fold
from services.proxy.registry import Registry

log = logging.getLogger(__name__)


class RegistryView:
    def __init__(self, bootstrap: str, on_change: Callable[[Registry], None] | None = None) -> None:
        self.bootstrap = bootstrap
        self.on_change = on_change
        self.registry = Registry()
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._task: asyncio.Task[None] | None = None
        self._advanced = asyncio.Event()
        self._started = asyncio.Event()
        self._lock = asyncio.Lock()

    async def start(self, timeout: float = 60) -> None:
        """Start consuming and return once the registry holds every event written so far (idempotent)."""
        async with self._lock:
            if self._consumer is None:
                self._consumer = await self._connect(timeout)
                self._task = asyncio.ensure_future(self._run())
                self._started.set()
        await self.catch_up(timeout)

    async def _connect(self, timeout: float) -> AIOKafkaConsumer:
        async def at_the_start(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
            self._partitions = tps
            await consumer.seek_to_beginning(*tps)

        return await topic_reader(self.bootstrap, SERVICE_EVENTS, time.monotonic() + timeout, at_the_start,
                                  auto_offset_reset="earliest", fetch_max_wait_ms=200)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                log.warning("registry view: %r; retrying", exc)
                await asyncio.sleep(1)
                continue
            changed = False
            for records in batch.values():
                for record in records:
                    try:
                        event = decode_event(record.value)
                    except DecodeError as exc:
                        log.error("registry view: skipping undecodable event at %s: %s", record.offset, exc)
                        continue
                    if isinstance(event, ServiceEvent):
                        registry_fold.evolve(self.registry, event)
                        changed = True
            self._advanced.set()
            self._advanced = asyncio.Event()
            if changed and self.on_change is not None:
                try:
                    self.on_change(self.registry)
                except Exception:
                    log.exception("registry view: change listener failed")

    async def catch_up(self, timeout: float = 10) -> None:
        """Wait until every event written before this call is applied; TimeoutError past `timeout`."""
        await asyncio.wait_for(self._started.wait(), timeout)
        assert self._consumer is not None
        deadline = time.monotonic() + timeout
        ends = await asyncio.wait_for(self._consumer.end_offsets(self._partitions), timeout)
        while True:
            advanced = self._advanced
            behind = [tp for tp, end in ends.items() if await self._consumer.position(tp) < end]
            if not behind:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the registry view did not catch up within {timeout:g} s")
            try:
                await asyncio.wait_for(advanced.wait(), left)
            except TimeoutError:
                pass
