"""The projector's write paths on real Postgres: big batches (COPY) and small ones (arrays) give the
same rows, and a batch whose positions another projector wrote first is written again, not lost.

The records are built here as aiokafka hands them (topic partition -> records with offset and
value); Kafka itself plays no part in what these tests check.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka import TopicPartition

from events.base import new_id, utcnow
from events.codec import encode
from events.files import FilePurged, FileStored
from events.jobs import JobStarted, JobSubmitted, JobSucceeded
from events.topics import FILE_EVENTS, JOB_EVENTS
from projections.runner import Projector
from services import db
from tests.infra_fixtures import Infra

TABLES = {"jobs": "job_id", "files": "file_id", "event_log": 'topic, partition, "offset"',
          "stream_owners": "stream_id", "projector_offsets": "topic, partition"}


@dataclass(frozen=True)
class Record:
    offset: int
    value: bytes


def _log(jobs: int) -> dict[TopicPartition, list[Record]]:
    """Each job submitted, started, succeeded with an output file; every fifth output purged."""
    job_events: list[bytes] = []
    file_events: list[bytes] = []
    for i in range(jobs):
        job_id, out, t0 = new_id(), new_id(), utcnow()
        common: dict[str, Any] = {"stream_id": job_id, "correlation_id": job_id, "actor": f"user{i % 3}"}
        job_events += [
            encode(JobSubmitted(event_id=new_id(), sequence=1, occurred_at=t0, **common, user_id=f"user{i % 3}",
                                command=f"echo {i}", submitted_at=t0, ttl=60 if i % 2 else None)),
            encode(JobStarted(event_id=new_id(), sequence=2, occurred_at=t0 + timedelta(milliseconds=3), **common,
                              executor_id="test", attempt=1)),
            encode(JobSucceeded(event_id=new_id(), sequence=3, occurred_at=t0 + timedelta(milliseconds=7), **common,
                                exit_code=0, answer_id=out)),
        ]
        file_events.append(encode(FileStored(event_id=new_id(), stream_id=out, sequence=1, occurred_at=t0,
                                             correlation_id=job_id, owner_id=f"user{i % 3}", name=f"{i}.out", size=i,
                                             sha256="00", content_type="text/plain", job_id=job_id)))
        if i % 5 == 0:
            file_events.append(encode(FilePurged(event_id=new_id(), stream_id=out, sequence=2, occurred_at=t0,
                                                 correlation_id=job_id, reason="test")))
    return {TopicPartition(JOB_EVENTS, 0): [Record(o, v) for o, v in enumerate(job_events)],
            TopicPartition(FILE_EVENTS, 0): [Record(o, v) for o, v in enumerate(file_events)]}


def _chunks(log: dict[TopicPartition, list[Record]], size: int) -> list[dict[TopicPartition, list[Record]]]:
    batches = []
    longest = max(len(records) for records in log.values())
    for start in range(0, longest, size):
        batch = {tp: records[start:start + size] for tp, records in log.items() if records[start:start + size]}
        batches.append(batch)
    return batches


@pytest.fixture
async def databases(infra: Infra) -> AsyncIterator[list[str]]:
    main = await db.connect(infra.database_url)
    names = [f"batches_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    urls = []
    for name in names:
        await main.execute(f"CREATE DATABASE {name}")
        urls.append(infra.database_url.rsplit("/", 1)[0] + f"/{name}")
        await db.migrate(urls[-1])
    try:
        yield urls
    finally:
        for name in names:
            await main.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await main.close()


async def _projector(url: str) -> Projector:
    projector = Projector("unused:9092", url)
    projector.pool = await db.create_pool(url, min_size=1, max_size=1, bulk=True, setup=projector.prepare_connection)
    return projector


async def _rows(url: str) -> dict[str, list[Any]]:
    conn = await db.connect(url)
    try:
        return {table: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY {key}")]
                for table, key in TABLES.items()}
    finally:
        await conn.close()


async def test_big_and_small_batches_write_the_same_rows(databases: list[str]) -> None:
    log = _log(700)  # 2,100 job events, 840 file events
    big, small = [await _projector(url) for url in databases]
    try:
        for batch in _chunks(log, 3000):  # every projection's COPY path
            await big.project(batch)
        for batch in _chunks(log, 40):  # the array path
            await small.project(batch)
    finally:
        for projector in (big, small):
            assert projector.pool is not None
            await projector.release()
            await projector.pool.close()
    written, again = await _rows(databases[0]), await _rows(databases[1])
    assert len(written["jobs"]) == 700 and len(written["event_log"]) == 2100 + 840
    assert sum(1 for row in written["files"] if row[-2] is not None) == 140  # purged_at set
    assert written == again


async def test_a_batch_another_projector_wrote_first_is_written_again_not_lost(databases: list[str]) -> None:
    log = _log(300)
    first = await _projector(databases[0])
    assert first.pool is not None
    try:
        await first.project(log)
        before = await _rows(databases[0])
        # A second projector that found no stored offset (it started the partitions at the same
        # time): its COPY of the same positions fails on the key, and it writes the batch carefully.
        await first.release()  # the pool's only connection
        await first.pool.execute("DELETE FROM projector_offsets")
        await first.project(log)
    finally:
        await first.release()
        await first.pool.close()
    assert await _rows(databases[0]) == before


async def test_the_event_log_keeps_the_raw_json_and_the_owner(databases: list[str]) -> None:
    log = _log(2)
    projector = await _projector(databases[0])
    assert projector.pool is not None
    try:
        await projector.project(log)
        await projector.release()
        conn: asyncpg.pool.PoolConnectionProxy
        async with projector.pool.acquire() as conn:
            rows = await conn.fetch("SELECT kind, owner, data FROM event_log WHERE topic = $1 ORDER BY \"offset\"",
                                    JOB_EVENTS)
    finally:
        await projector.release()
        await projector.pool.close()
    assert [r["kind"] for r in rows] == ["job"] * 6
    assert [r["owner"] for r in rows] == ["user0"] * 3 + ["user1"] * 3  # later events: from the first one
    assert rows[0]["data"]["command"] == "echo 0"
