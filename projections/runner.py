"""The projector: consumes the event topics and folds them into Postgres with exactly-once effect.

Each batch is one transaction holding the rows *and* the next offset of every partition it read,
so a projector killed at any point resumes exactly where its last commit left off. Kafka's own
committed offsets are never used for this; they are only updated so that lag is visible to tools,
in the background, at most once a second.

The transactions commit with `synchronous_commit = off`: the projector does not wait for the WAL
flush. If Postgres itself crashes, the last few hundred milliseconds of commits may be lost, but
their rows and their offsets are lost together, so the projector simply projects that tail again
from Kafka (the log is the truth; the tables are a cache of it). A Postgres crash can therefore
briefly take back a row a reader saw; nothing is lost for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
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
KAFKA_COMMIT_INTERVAL = 1.0  # seconds between Kafka offset commits (lag reporting only)
# The least time from one batch to the next: a transaction costs about a millisecond of CPU whatever
# its size, so at a few thousand events/s a projector fed every record at once commits a few events at
# a time and spends most of its CPU per transaction, not per event. 10 ms: ~2.5x less CPU (projector
# and Postgres) at 1,000 events/s. The partitions are paused for the rest of that time (`_rest`), and
# the next fetch is a long poll that returns at the first record: an idle projector sends a fetch every
# half second, where a fetch held at the broker for 10 ms cost ~0.25 cores of an idle machine (half of
# it Kafka's, answering 100 fetches of 64 partitions a second).
PACE = 0.01
LONG_POLL_MS = 500

_STORE_OFFSETS = """
WITH stored AS (
    INSERT INTO projector_offsets (topic, partition, next_offset)
    SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])
    ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset
)
SELECT pg_notify($4, '')
"""


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
                 search_path: str | None = None, settings: dict[str, str] | None = None,
                 pace: float = PACE) -> None:
        self.bootstrap = bootstrap
        self.pace = pace
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
        self._conn: asyncpg.pool.PoolConnectionProxy | None = None  # held: no pool reset per batch
        self._to_commit: dict[TopicPartition, int] = {}  # projected, not yet committed to Kafka

    async def prepare_connection(self, conn: asyncpg.Connection) -> None:
        """The staging tables of the projections that COPY big batches (projections/batch.py)."""
        for projection in self.projections:
            if hasattr(projection, "STAGING"):
                await conn.execute(projection.STAGING)

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
                                         settings=self.settings, bulk=True, setup=self.prepare_connection)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.batch_size,
            fetch_max_wait_ms=LONG_POLL_MS,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        self.consumer.subscribe(list(self.by_topic), listener=_SeekToStored(self))
        await self.consumer.start()
        log.info("projector consuming %s", ", ".join(self.by_topic))
        committer = asyncio.ensure_future(self._commit_to_kafka())
        try:
            while True:
                batch = await self.consumer.getmany(timeout_ms=LONG_POLL_MS, max_records=self.batch_size)
                if not batch:
                    continue
                full = sum(len(records) for records in batch.values()) >= self.batch_size
                resting = self._pause() if self.pace and not full else None  # a full one: more is waiting
                await self.project(batch)
                if resting is not None:
                    await self._rest(resting)
        finally:
            committer.cancel()
            with contextlib.suppress(BaseException):
                await committer
            await self.consumer.stop()
            await self.release()
            await self.pool.close()

    def _pause(self) -> tuple[float, set[TopicPartition]]:
        """No fetch until the pace is over (called before anything awaits: the fetcher, woken by the
        batch's consumption, would otherwise send the next fetch at once)."""
        assert self.consumer is not None
        paused = set(self.consumer.assignment())
        self.consumer.pause(*paused)
        return asyncio.get_running_loop().time() + self.pace, paused

    async def _rest(self, resting: tuple[float, set[TopicPartition]]) -> None:
        until, paused = resting
        assert self.consumer is not None
        try:
            await asyncio.sleep(until - asyncio.get_running_loop().time())
        finally:
            self.consumer.resume(*(paused & self.consumer.assignment()))  # a rebalance may have taken some

    async def release(self) -> None:
        """Give back the connection the batches use (before closing the pool)."""
        if self._conn is not None and self.pool is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await self.pool.release(conn)

    async def _commit_to_kafka(self) -> None:
        """Kafka's committed offsets, for lag tools only: never waited for by a batch."""
        assert self.consumer is not None
        try:
            while True:
                await asyncio.sleep(KAFKA_COMMIT_INTERVAL)
                await self._commit_now()
        finally:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._commit_now(), 2)

    async def _commit_now(self) -> None:
        if not self._to_commit or self.consumer is None:
            return
        offsets, self._to_commit = self._to_commit, {}
        assigned = self.consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
        try:
            if offsets:
                await self.consumer.commit(offsets)
        except Exception as exc:  # Postgres holds the truth
            log.debug("kafka offset commit failed: %r", exc)

    async def project(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Fold one batch into Postgres (rows and offsets in one transaction)."""
        try:
            next_offsets = await self._project(batch, careful=False)
        except asyncpg.UniqueViolationError:
            # Another projector wrote some of these positions first (both started a partition that had
            # no stored offset yet): the transaction is gone; write the batch again, skipping what exists.
            log.info("event log positions written concurrently; projecting the batch again")
            next_offsets = await self._project(batch, careful=True)
        for topic, partition, offset in next_offsets:
            self._to_commit[TopicPartition(topic, partition)] = offset

    async def _project(self, batch: dict[TopicPartition, list[Any]], careful: bool) -> list[tuple[str, int, int]]:
        assert self.pool is not None
        if self._conn is None:
            self._conn = await self.pool.acquire()
        conn = self._conn
        # One round trip. Not waiting for the WAL flush is safe: rows and offsets are lost together
        # (module docstring).
        await conn.execute("BEGIN; SET LOCAL synchronous_commit = off")
        try:
            next_offsets = await self._fold(conn, batch, careful)
            await conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
            if conn.is_closed():
                await self.release()
            raise
        return next_offsets

    async def _fold(self, conn: asyncpg.pool.PoolConnectionProxy, batch: dict[TopicPartition, list[Any]],
                    careful: bool) -> list[tuple[str, int, int]]:
        """Inside the transaction: the records not projected yet, into rows, then the offsets."""
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
            return []
        for projection in self.projections:
            if per_topic.get(projection.TOPIC):
                await projection.write(conn, per_topic[projection.TOPIC])
        if logged and self.log_events:
            await event_log.write(conn, logged, careful=careful)
        topics, partitions, offsets = zip(*next_offsets, strict=True)
        await conn.execute(_STORE_OFFSETS, list(topics), list(partitions), list(offsets), NOTIFY_CHANNEL)
        return next_offsets


async def run_projector(bootstrap: str, database_url: str) -> None:
    pace = float(os.environ.get("SKYJOBS_PROJECTOR_PACE_MS", PACE * 1000)) / 1000
    await Projector(bootstrap, database_url, pace=pace).run()
