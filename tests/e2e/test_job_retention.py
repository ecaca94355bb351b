"""A job run with a retention is deleted once it has passed, and its state then leaves the lifecycle
agent's table (a tombstone in its changelog); a repeat of its Idempotency-Key does not bring it back."""

from __future__ import annotations

import uuid

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from events.topics import JOB_COMMANDS, JOB_EVENTS, JOB_STATE_CHANGELOG
from services.kafka import partition_of
from tests.conftest import Stack, eventually, wait_state

GROUP = "skyjobs-jobs"  # the lifecycle agent's consumer group (the faust app id)


async def test_a_job_is_deleted_when_its_retention_has_passed_then_forgotten(
    stack: Stack, alice: httpx.AsyncClient
) -> None:
    key = {"Idempotency-Key": f"retention-{uuid.uuid4()}"}
    body = {"command": "echo kept briefly", "retention": 1}
    response = await alice.post("/api/job/run", json=body, headers=key)
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    info = await wait_state(alice, job_id, "succeeded")
    assert info["retention"] == 1
    assert (await alice.get(f"/api/files/{info['answer_id']}")).text == "kept briefly\n"

    async def gone() -> bool:
        return (await alice.get(f"/api/job/job_info/{job_id}")).status_code == 410

    await eventually(gone, timeout=30, what="the job deleted a second after it finished")
    assert job_id not in (await alice.get("/api/job/list_jobs", params={"limit": 1000})).json()["job_ids"]

    async def purged() -> bool:
        return (await alice.get(f"/api/files/{info['answer_id']}")).status_code in (404, 410)

    await eventually(purged, timeout=30, what="its output purged")

    consumer = AIOKafkaConsumer(JOB_STATE_CHANGELOG, bootstrap_servers=stack.infra.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        async def tombstone() -> bool:
            batch = await consumer.getmany(timeout_ms=500)
            return any(r.key == job_id.encode() and r.value is None for rs in batch.values() for r in rs)

        await eventually(tombstone, timeout=60, interval=0, what="the job's state forgotten (a tombstone)")
    finally:
        await consumer.stop()

    # The same key and body once the job is forgotten: the same job id, and no second run.
    again = await alice.post("/api/job/run", json=body, headers=key)
    assert again.status_code == 201 and again.json()["job_id"] == job_id
    assert (await alice.get(f"/api/job/job_info/{job_id}")).status_code == 410
    await _assert_submitted_once(stack, job_id)


async def _assert_submitted_once(stack: Stack, job_id: str) -> None:
    """Once the lifecycle agent has read its commands' partition to the end, the job has one job.submitted."""
    partition = partition_of(job_id, int(stack.env["SKYJOBS_PARTITIONS"]))
    commands, events = TopicPartition(JOB_COMMANDS, partition), TopicPartition(JOB_EVENTS, partition)
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.infra.kafka_bootstrap, group_id=GROUP,
                                enable_auto_commit=False)  # only reads the group's offsets: it never joins
    await consumer.start()
    try:
        end = (await consumer.end_offsets([commands]))[commands]

        async def caught_up() -> bool:
            return (await consumer.committed(commands) or 0) >= end

        await eventually(caught_up, timeout=30, what="the lifecycle agent past the repeat's offset")
        consumer.assign([events])
        await consumer.seek_to_beginning(events)
        last = (await consumer.end_offsets([events]))[events]
        submitted = 0
        while await consumer.position(events) < last:
            for record in (await consumer.getmany(events, timeout_ms=1000)).get(events, []):
                if record.key == job_id.encode() and orjson.loads(record.value)["type"] == "job.submitted.v1":
                    submitted += 1
        assert submitted == 1
    finally:
        await consumer.stop()
