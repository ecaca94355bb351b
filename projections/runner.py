"""The projector: consumes the event topics and folds them into Postgres with exactly-once effect.

Each batch is one transaction holding the rows *and* the next offset of every partition it read,
so a projector killed at any point resumes exactly where its last commit left off. Kafka's own
committed offsets are never used for this; they are only updated so that lag is visible to tools.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from types import ModuleType
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from events.codec import DecodeError, decode_event
from projections import (
    event_log,
    files,
    jobs,
    pipeline_runs,
    pipeline_steps,
    pipelines,
    services,
    tasks,
    works,
)
from services import db

log = logging.getLogger(__name__)

PROJECTIONS: tuple[ModuleType, ...] = (files, jobs, services, tasks, works, pipelines, pipeline_runs, pipeline_steps)
GROUP = "skyjobs-projector"
NOTIFY_CHANNEL = "skyjobs_projection"


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, projector: Projector) -> None:
        self.projector = projector

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.projector.seek(assigned)


class Projector:
    def __init__(self, bootstrap: str, database_url: str, batch_size: int = 2000, group: str = GROUP,
                 projections: tuple[ModuleType, ...] = PROJECTIONS, log_events: bool = True,
                 search_path: str | None = None, settings: dict[str, str] | None = None) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.database_url = database_url
        self.batch_size = batch_size
        self.projections = projections
        self.log_events = log_events
        self.search_path = search_path
        self.settings = settings
        self.by_topic = {p.TOPIC: p for p in projections}
        if log_events:  # the event log holds every event topic
            self.by_topic |= {p.TOPIC: p for p in PROJECTIONS}
        self.pool: asyncpg.Pool | None = None
        self.consumer: AIOKafkaConsumer | None = None

    async def seek(self, assigned: Any) -> None:
        assert self.pool is not None and self.consumer is not None
        rows = await self.pool.fetch("SELECT topic, partition, next_offset FROM projector_offsets")
        stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        for tp in assigned:
            offset = stored.get((tp.topic, tp.partition))
            if offset is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)

    async def run(self) -> None:
        self.pool = await db.create_pool(self.database_url, min_size=1, max_size=2, search_path=self.search_path,
                                         settings=self.settings)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.batch_size,
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        self.consumer.subscribe(list(self.by_topic), listener=_SeekToStored(self))
        await self.consumer.start()
        log.info("projector consuming %s", ", ".join(self.by_topic))
        try:
            while True:
                batch = await self.consumer.getmany(timeout_ms=500, max_records=self.batch_size)
                if batch:
                    await self.project(batch)
        finally:
            await self.consumer.stop()
            await self.pool.close()

    async def project(self, batch: dict[TopicPartition, list[Any]]) -> None:
        assert self.pool is not None and self.consumer is not None
        async with self.pool.acquire() as conn, conn.transaction():
            keys = [(tp.topic, tp.partition) for tp in batch]
            rows = await conn.fetch(
                "SELECT topic, partition, next_offset FROM projector_offsets "
                "WHERE (topic, partition) IN (SELECT * FROM unnest($1::text[], $2::int[])) FOR UPDATE",
                [k[0] for k in keys], [k[1] for k in keys],
            )
            stored = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
            per_topic: dict[str, list[Any]] = defaultdict(list)
            logged: list[event_log.Logged] = []
            next_offsets = []
            for tp, records in batch.items():
                start = stored.get((tp.topic, tp.partition), 0)
                fresh = [r for r in records if r.offset >= start]
                if not fresh:
                    continue
                for record in fresh:
                    try:
                        event = decode_event(record.value)
                        per_topic[tp.topic].append(event)
                        logged.append(event_log.Logged(tp.topic, tp.partition, record.offset, record.value, event))
                    except DecodeError as exc:
                        log.error("skipping undecodable event %s@%s: %s", tp, record.offset, exc)
                next_offsets.append((tp.topic, tp.partition, fresh[-1].offset + 1))
            if not next_offsets:
                return
            for projection in self.projections:
                if per_topic.get(projection.TOPIC):
                    await projection.write(conn, per_topic[projection.TOPIC])
            if logged and self.log_events:
                await event_log.write(conn, logged)
            await conn.executemany(
                "INSERT INTO projector_offsets (topic, partition, next_offset) VALUES ($1, $2, $3) "
                "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
                next_offsets,
            )
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
        try:
            await self.consumer.commit({TopicPartition(t, p): o for t, p, o in next_offsets})
        except Exception as exc:  # only for lag reporting; Postgres holds the truth
            log.debug("kafka offset commit failed: %r", exc)


async def run_projector(bootstrap: str, database_url: str) -> None:
    await Projector(bootstrap, database_url).run()
