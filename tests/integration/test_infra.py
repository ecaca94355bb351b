"""The local Kafka + Postgres (infra.local) start, serve, stop and restart on the same data dirs."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.local import LocalKafka, LocalPostgres, docker_available, java_bin, pg_bin_dir


def _local_binaries() -> bool:
    try:
        java_bin()
        pg_bin_dir()
    except RuntimeError:
        return False
    return shutil.which("mvn") is not None


pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        docker_available() and not _local_binaries(),
        reason="Docker is used here and java/mvn/postgres are absent",
    ),
]

TOPIC = "infra-smoke"
GROUP = "infra-smoke-group"


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: that is 0700 root, out of reach for the postgres user.
    path = Path(tempfile.mkdtemp(prefix="skyjobs-test-pg-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _start(kafka: LocalKafka, postgres: LocalPostgres) -> None:
    started = time.monotonic()
    await asyncio.gather(asyncio.to_thread(kafka.start), asyncio.to_thread(postgres.start))
    await asyncio.gather(kafka.wait_ready(60), postgres.wait_ready(30))
    print(f"kafka + postgres ready in {time.monotonic() - started:.1f} s")


async def test_local_kafka_and_postgres_keep_data_across_restart(tmp_path: Path, pg_dir: Path) -> None:
    kafka = LocalKafka(tmp_path / "kafka", fast_start=True)
    postgres = LocalPostgres(pg_dir, fast=True)
    try:
        await _start(kafka, postgres)

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()

        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(TOPIC, b"hello", key=b"job-1")
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            TOPIC, bootstrap_servers=kafka.bootstrap, group_id=GROUP,
            auto_offset_reset="earliest", enable_auto_commit=False,
        )  # fmt: skip
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), 30)
            assert (record.key, record.value) == (b"job-1", b"hello")
            await consumer.commit()
        finally:
            await consumer.stop()

        conn = await asyncpg.connect(postgres.dsn)
        try:
            assert await conn.fetchval("select 1") == 1
            await conn.execute("create table kept (v text); insert into kept values ('still here')")
        finally:
            await conn.close()

        kafka.stop()
        postgres.stop()
        assert kafka.pid_path.exists() is False and postgres.pid_path.exists() is False

        # Same dirs, no ports given: same ports, same data.
        kafka2 = LocalKafka(tmp_path / "kafka", fast_start=True)
        postgres2 = LocalPostgres(pg_dir, fast=True)
        assert (kafka2.bootstrap, postgres2.dsn) == (kafka.bootstrap, postgres.dsn)
        kafka, postgres = kafka2, postgres2
        await _start(kafka, postgres)

        tp = TopicPartition(TOPIC, 0)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap, group_id=GROUP, enable_auto_commit=False
        )
        await consumer.start()
        try:
            # Consumer offsets survived too (the coordinator loads them shortly after the restart).
            deadline = asyncio.get_running_loop().time() + 30
            while (committed := await consumer.committed(tp)) != 1 and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            assert committed == 1
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            record = await asyncio.wait_for(consumer.getone(), 30)
            assert (record.key, record.value, record.offset) == (b"job-1", b"hello", 0)
        finally:
            await consumer.stop()

        conn = await asyncpg.connect(postgres.dsn)
        try:
            assert await conn.fetchval("select v from kept") == "still here"
        finally:
            await conn.close()
    finally:
        kafka.stop()
        postgres.stop()
