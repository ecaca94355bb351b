"""The topics are a public contract: a plain Kafka client can submit a job; garbage is dead-lettered."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from events.topics import DEAD_LETTERS, JOB_COMMANDS
from tests.conftest import Stack, eventually, wait_state


async def test_plain_kafka_client_submits_a_job_and_garbage_goes_to_dead_letters(
    stack: Stack, admin: httpx.AsyncClient
) -> None:
    job_id = str(uuid.uuid4())
    message = {
        "type": "job.run.v1", "command_id": str(uuid.uuid4()), "stream_id": job_id,
        "issued_at": datetime.now(UTC).isoformat(), "user_id": "admin", "command": "echo from kafka",
    }
    garbage_key = str(uuid.uuid4())
    producer = AIOKafkaProducer(bootstrap_servers=stack.infra.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(JOB_COMMANDS, orjson.dumps(message), key=job_id.encode())
        await producer.send_and_wait(JOB_COMMANDS, b'{"type": "job.run.v1", "command": 5}', key=garbage_key.encode())
    finally:
        await producer.stop()

    info = await wait_state(admin, job_id, "succeeded", timeout=60)
    assert (await admin.get(f"/api/files/{info['answer_id']}")).text == "from kafka\n"

    consumer = AIOKafkaConsumer(DEAD_LETTERS, bootstrap_servers=stack.infra.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        async def dead_lettered() -> dict[str, bytes] | None:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if record.key == garbage_key.encode():
                        return dict(record.headers)
            return None

        headers = await eventually(dead_lettered, timeout=30, what="the garbage command in dead letters")
        assert b"command" in headers["skyjobs_reason"]
    finally:
        await consumer.stop()
    assert (await admin.get(f"/api/job/job_info/{garbage_key}")).status_code == 404
