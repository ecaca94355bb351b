"""Kafka + Postgres for the test session: given by env vars, in Docker (testcontainers), or local processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from infra.local import (
    LocalKafka,
    LocalPostgres,
    docker_available,
    free_port,
    run_sync,
    start_all,
    wait_kafka,
    wait_postgres,
)

__all__ = ["Infra", "docker_available", "running_infra"]

KAFKA_IMAGE = "apache/kafka:4.1.1"
POSTGRES_IMAGE = "postgres:16"
POSTGRES_TEST_COMMAND = (
    "postgres -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
)


@dataclass
class Infra:
    kafka_bootstrap: str
    database_url: str
    kafka: LocalKafka | None
    postgres: LocalPostgres | None


@contextmanager
def running_infra(tmp_root: Path) -> Iterator[Infra]:
    """Kafka + Postgres for tests, in this order of preference:

    1. SKYJOBS_TEST_KAFKA_BOOTSTRAP + SKYJOBS_TEST_DATABASE_URL (already running services);
    2. Docker containers through testcontainers (apache/kafka 4.1.1, postgres:16);
    3. local processes (LocalKafka + LocalPostgres) on free ports under tmp_root, stopped at exit.
    """
    bootstrap = os.environ.get("SKYJOBS_TEST_KAFKA_BOOTSTRAP")
    database_url = os.environ.get("SKYJOBS_TEST_DATABASE_URL")
    if bootstrap and database_url:
        yield Infra(bootstrap, database_url, None, None)
    elif docker_available():
        with _containers() as infra:
            yield infra
    else:
        with _local_processes(Path(tmp_root)) as infra:
            yield infra


@contextmanager
def _local_processes(tmp_root: Path) -> Iterator[Infra]:
    # The postgres user must reach its data dir: pytest's tmp dirs are 0700 root, so use a mkdtemp
    # (LocalPostgres chowns it to postgres when we are root).
    pg_dir = Path(tempfile.mkdtemp(prefix="skyjobs-test-pg-"))
    kafka = LocalKafka(tmp_root / "kafka", fast_start=True)
    postgres = LocalPostgres(pg_dir, fast=True)
    try:
        start_all(kafka, postgres)
        yield Infra(kafka.bootstrap, postgres.dsn, kafka, postgres)
    finally:
        kafka.stop()
        postgres.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)


@contextmanager
def _containers() -> Iterator[Infra]:
    """apache/kafka (its env-var config, as in docker-compose.yml) + postgres:16 with test settings.

    Kafka must advertise the address the tests reach it on, so its port is bound to a host port chosen
    up front (testcontainers' KafkaContainer only knows how to script the Confluent cp-kafka images).
    """
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.docker_client import DockerClient

    host = DockerClient().host()
    port = free_port()
    kafka = (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(9092, port)
        .with_envs(
            KAFKA_NODE_ID="1",
            KAFKA_PROCESS_ROLES="broker,controller",
            KAFKA_LISTENERS="PLAINTEXT://:9092,CONTROLLER://:9093",
            KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://{host}:{port}",
            KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
            KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
            KAFKA_INTER_BROKER_LISTENER_NAME="PLAINTEXT",
            KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS="1",
            KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
            KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR="1",
            KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
            KAFKA_AUTO_CREATE_TOPICS_ENABLE="false",
            KAFKA_NUM_PARTITIONS="8",
            KAFKA_LOG_RETENTION_MS="-1",
        )
    )
    postgres = PostgresContainer(
        POSTGRES_IMAGE, username="skyjobs", password="skyjobs", dbname="skyjobs", driver=None
    ).with_command(POSTGRES_TEST_COMMAND)
    with kafka, postgres:
        bootstrap, database_url = f"{host}:{port}", postgres.get_connection_url()

        async def wait_ready() -> None:
            await asyncio.gather(wait_kafka(bootstrap, timeout=90), wait_postgres(database_url, timeout=60))

        run_sync(wait_ready())
        yield Infra(bootstrap, database_url, None, None)
