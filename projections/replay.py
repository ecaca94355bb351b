"""`skyjobs replay`: rebuild read models from the beginning of the log, then swap them in atomically.

    1. create every projection table afresh in a new schema `replay_<time>`, without the indexes that
       back no constraint (building them once at the end is cheaper than keeping them up row by row);
    2. fold the log into it from offset 0 with a projector of its own (its own consumer group and
       offsets table), while the live projector and the API carry on; then build those indexes;
    3. when the rebuild has reached the live projector's offsets, lock the live offsets table (the
       live projector waits at its next batch), check the positions are still equal, and move the
       rebuilt tables into `public` and the old ones out, in one transaction;
    4. drop the old tables (or keep them with --keep-old, to compare).

The live offsets stay valid across the swap: the rebuilt tables hold exactly what they describe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from types import ModuleType

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from projections import event_log
from projections.runner import PROJECTIONS, Projector
from services import db

log = logging.getLogger(__name__)

# The tables each projection owns (a projection named after its only table needs no entry).
TABLES: dict[str, tuple[str, ...]] = {
    "jobs": ("jobs", "job_counts"),
    "works": ("works", "work_tasks"),
    "event_log": ("event_log", "stream_owners"),
    "services": ("services", "service_instances"),
}
NAMES = tuple(p.NAME for p in PROJECTIONS) + (event_log.NAME,)


class ReplayError(RuntimeError):
    retryable = False


def tables_of(name: str) -> tuple[str, ...]:
    return TABLES.get(name, (name,))


async def _offsets(conn: asyncpg.Connection, schema: str, topics: list[str]) -> dict[tuple[str, int], int]:
    rows = await conn.fetch(f'SELECT topic, partition, next_offset FROM "{schema}".projector_offsets '
                            "WHERE topic = ANY($1)", topics)
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def _end_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        ends = await consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): o for tp, o in ends.items() if o > 0}
    finally:
        with contextlib.suppress(BaseException):
            await consumer.stop()


async def replay(bootstrap: str, database_url: str, names: tuple[str, ...], keep_old: bool = False,
                 timeout: float = 3600) -> dict[str, object]:
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise ReplayError(f"unknown projection {unknown[0] if unknown else ''!r}; known: {', '.join(NAMES)}")
    # To the microsecond: two replays within one second (a quick one, then another) must not share a schema.
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")
    schema, old = f"replay_{stamp}", f"replaced_{stamp}"
    chosen: tuple[ModuleType, ...] = tuple(p for p in PROJECTIONS if p.NAME in names)
    log_events = event_log.NAME in names
    topics = sorted({p.TOPIC for p in (PROJECTIONS if log_events else chosen)})
    tables = [t for n in names for t in tables_of(n)]
    conn = await db.connect(database_url)
    started = time.monotonic()
    await db.migrate_into(conn, schema)
    search_path = f'"{schema}", public'

    def projector(**kwargs: object) -> Projector:
        # Big batches. Like every projector it does not wait for the WAL flush at each commit; the
        # swap is a durable commit, and it flushes the WAL before it, the rebuilt rows included.
        return Projector(bootstrap, database_url, group=f"skyjobs-{schema}", projections=chosen,
                         log_events=log_events, search_path=search_path, pace=0, **kwargs)  # type: ignore[arg-type]

    phases = {"create": time.monotonic() - started}
    indexes = await _drop_secondary_indexes(conn, schema, tables)
    # 1. the bulk of the log, while everything else carries on
    goal = await _end_offsets(bootstrap, topics)
    task = asyncio.ensure_future(projector(batch_size=10_000).run())
    try:
        while _behind(await _offsets(conn, schema, topics), goal):
            if task.done():
                task.result()
                raise ReplayError("the replay projector stopped")
            if time.monotonic() - started > timeout:
                raise ReplayError(f"the rebuild did not catch up within {timeout:g} s")
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    phases["rebuild"] = time.monotonic() - started - sum(phases.values())
    await _build(database_url, indexes)
    phases["indexes"] = time.monotonic() - started - sum(phases.values())
    # 2. the last records up to exactly the live projector's position, and the swap, under one lock
    finisher = projector(batch_size=5000)
    finisher.pool = await db.create_pool(database_url, min_size=1, max_size=1, search_path=search_path, bulk=True,
                                         setup=finisher.prepare_connection)
    try:
        while not await _finish(conn, finisher, schema, old, topics, tables):
            if time.monotonic() - started > timeout:
                raise ReplayError(f"the live projector did not reach the rebuild within {timeout:g} s")
            await asyncio.sleep(0.1)
    finally:
        await finisher.release()
        await finisher.pool.close()
    phases["swap"] = time.monotonic() - started - sum(phases.values())
    events = sum((await _offsets(conn, "public", topics)).values())
    if not keep_old:
        await conn.execute(f'DROP SCHEMA "{old}" CASCADE')
    await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await conn.close()
    seconds = time.monotonic() - started
    phases["drop"] = seconds - sum(phases.values())
    return {"projections": list(names), "tables": tables, "events": events, "seconds": round(seconds, 3),
            "events_per_second": round(events / seconds) if seconds else None,
            "old_schema": old if keep_old else None, "phases": {k: round(v, 3) for k, v in phases.items()}}


async def _build(database_url: str, indexes: list[str], connections: int = 2) -> None:
    """Build the indexes, `connections` at a time (Postgres sorts each on one core)."""
    queue = list(reversed(indexes))

    async def builder() -> None:
        conn = await db.connect(database_url)
        try:
            await conn.execute("SET maintenance_work_mem = '256MB'")
            while queue:
                await conn.execute(queue.pop())
        finally:
            await conn.close()

    await asyncio.gather(*(builder() for _ in range(min(connections, len(indexes)))))


async def _drop_secondary_indexes(conn: asyncpg.Connection, schema: str, tables: list[str]) -> list[str]:
    """Drop the indexes of `tables` that back no constraint; return their definitions, to build later."""
    rows = await conn.fetch(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = $1 AND i.tablename = ANY($2) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname "
        "AND c.connamespace = $1::regnamespace)", schema, tables)
    for row in rows:
        await conn.execute(f'DROP INDEX "{schema}"."{row["indexname"]}"')
    return [row["indexdef"] for row in rows]


async def _finish(conn: asyncpg.Connection, finisher: Projector, schema: str, old: str, topics: list[str],
                  tables: list[str]) -> bool:
    """Under the lock: bring the rebuild to the live position and swap; False to try again later."""
    async with conn.transaction():
        await conn.execute("LOCK TABLE public.projector_offsets IN EXCLUSIVE MODE")  # the live projector waits
        live = await _offsets(conn, "public", topics)
        rebuilt = await _offsets(conn, schema, topics)
        if any(offset > live.get(tp, 0) for tp, offset in rebuilt.items()):
            return False  # the live projector is behind the rebuild: let it catch up first
        behind = {tp: (rebuilt.get(tp, 0), offset) for tp, offset in live.items() if rebuilt.get(tp, 0) < offset}
        if behind:
            await _project_range(finisher, behind)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{old}"')
        for table in tables:
            await conn.execute(f'ALTER TABLE public."{table}" SET SCHEMA "{old}"')
            await conn.execute(f'ALTER TABLE "{schema}"."{table}" SET SCHEMA public')
    log.info("swapped in %s", ", ".join(tables))
    return True


async def _project_range(finisher: Projector, ranges: dict[tuple[str, int], tuple[int, int]]) -> None:
    """Project the records in [start, end) of each partition through the finisher."""
    consumer = AIOKafkaConsumer(bootstrap_servers=finisher.bootstrap, enable_auto_commit=False)
    await consumer.start()
    finisher.consumer = consumer
    try:
        consumer.assign([TopicPartition(*tp) for tp in ranges])
        for tp, (start, _) in ranges.items():
            consumer.seek(TopicPartition(*tp), start)
        remaining = dict(ranges)
        while remaining:
            batch = await consumer.getmany(*[TopicPartition(*tp) for tp in remaining], timeout_ms=1000)
            trimmed = {}
            for tp, records in batch.items():
                key = (tp.topic, tp.partition)
                if key not in remaining:
                    continue
                kept = [r for r in records if r.offset < remaining[key][1]]
                if kept:
                    trimmed[tp] = kept
                if records and records[-1].offset + 1 >= remaining[key][1]:
                    del remaining[key]
            if trimmed:
                await finisher.project(trimmed)
    finally:
        with contextlib.suppress(BaseException):
            await consumer.stop()


def _behind(have: dict[tuple[str, int], int], goal: dict[tuple[str, int], int]) -> bool:
    return any(have.get(tp, 0) < offset for tp, offset in goal.items())
