"""Faults, run last (file name): processes killed with SIGKILL, Kafka stopped under load.

Nothing accepted is lost, nothing stays running forever, and the read models end up equal to
those of an uninterrupted run.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from events.topics import FILE_EVENTS, JOB_EVENTS, WORK_EVENTS
from projections.runner import Projector
from services import db
from tests.conftest import Stack, eventually, wait_state

COMPARED = (JOB_EVENTS, FILE_EVENTS, WORK_EVENTS)  # and their tables below


async def _run(client: httpx.AsyncClient, command: str) -> str:
    response = await client.post("/api/job/run", json={"command": command})
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


async def test_executor_killed_mid_job_reruns_it(stack: Stack, alice: httpx.AsyncClient) -> None:
    job_id = await _run(alice, "sleep 2; echo survived")
    await wait_state(alice, job_id, "running")
    stack.supervisor.kill("executor")  # SIGKILL; the supervisor starts a new executor a second later
    info = await wait_state(alice, job_id, "succeeded", "failed", timeout=120)
    assert info["state"] == "succeeded", info
    assert info["attempt"] == 2, info
    assert "stopped heartbeating" in (info["error"] or "") or info["error"] is None
    assert (await alice.get(f"/api/files/{info['answer_id']}")).text == "survived\n"


async def _end_offsets(consumer: AIOKafkaConsumer) -> dict[tuple[str, int], int]:
    tps = [TopicPartition(t, p) for t in COMPARED for p in consumer.partitions_for_topic(t) or ()]
    ends = await consumer.end_offsets(tps)
    return {(tp.topic, tp.partition): offset for tp, offset in ends.items() if offset > 0}


async def _offsets(conn: asyncpg.Connection) -> dict[tuple[str, int], int]:
    rows = await conn.fetch("SELECT topic, partition, next_offset FROM projector_offsets WHERE topic = ANY($1)",
                            list(COMPARED))
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def _rows(conn: asyncpg.Connection, table: str, key: str) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY {key}")]


async def test_projector_killed_mid_stream_ends_equal_to_an_uninterrupted_run(
    stack: Stack, admin: httpx.AsyncClient
) -> None:
    ids = await asyncio.gather(*(_run(admin, f"echo {i}") for i in range(150)))
    stack.supervisor.kill("projector")  # while it folds the burst; restarted a second later
    await asyncio.sleep(0.3)
    stack.supervisor.kill("projector")

    async def all_done() -> bool:
        states = await asyncio.gather(*(admin.get(f"/api/job/job_info/{j}") for j in ids))
        return all(s.json().get("state") == "succeeded" for s in states)

    await eventually(all_done, timeout=120, interval=0.5, what="150 jobs succeeded after projector kills")

    # An uninterrupted run: a second projector folds the whole log into a fresh database.
    verify_db = f"verify_{uuid.uuid4().hex[:8]}"
    main = await db.connect(stack.infra.database_url)
    await main.execute(f"CREATE DATABASE {verify_db}")
    verify_url = stack.infra.database_url.rsplit("/", 1)[0] + f"/{verify_db}"
    await db.migrate(verify_url)
    verify = await db.connect(verify_url)
    fresh = Projector(stack.infra.kafka_bootstrap, verify_url, group=f"verify-{verify_db}")
    task = asyncio.ensure_future(fresh.run())
    log = AIOKafkaConsumer(*COMPARED, bootstrap_servers=stack.infra.kafka_bootstrap)
    await log.start()
    try:
        async def caught_up() -> bool:
            ends = await _end_offsets(log)
            return await _offsets(main) == ends and await _offsets(verify) == ends

        await eventually(caught_up, timeout=120, interval=0.5, what="both projections at the end of the log")
        for table, key in (("jobs", "job_id"), ("files", "file_id"), ("works", "work_id"), ("work_tasks", "task_id"),
                           ("job_counts", "state")):
            assert await _rows(main, table, key) == await _rows(verify, table, key), table
        assert len(await _rows(main, "jobs", "job_id")) >= 150
        counted = "SELECT state, count(*) AS n FROM jobs WHERE NOT deleted GROUP BY state"
        for conn in (main, verify):  # what /metrics reads equals a count of the table
            kept = {r["state"]: r["n"] for r in await conn.fetch("SELECT state, n FROM job_counts") if r["n"]}
            assert kept == {r["state"]: r["n"] for r in await conn.fetch(counted)}
    finally:
        with contextlib.suppress(BaseException):
            await log.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await verify.close()
        await main.execute(f"DROP DATABASE {verify_db} WITH (FORCE)")
        await main.close()


async def test_kafka_down_answers_503_fast_and_keeps_what_was_accepted(stack: Stack, bob: httpx.AsyncClient) -> None:
    if stack.infra.kafka is None:
        pytest.skip("Kafka is not a local process of this session (external or container)")
    before = await _run(bob, "echo before")
    await wait_state(bob, before, "succeeded")
    accepted_while_stopping = [await _run(bob, "echo racing")]
    stack.infra.kafka.stop()
    try:
        started = asyncio.get_running_loop().time()
        response = await bob.post("/api/job/run", json={"command": "echo during"})
        elapsed = asyncio.get_running_loop().time() - started
        assert response.status_code == 503, response.text
        assert "not accepted" in response.json()["error"] and elapsed < 15
        assert (await bob.get(f"/api/job/job_info/{before}")).json()["state"] == "succeeded"  # reads still work
    finally:
        stack.infra.kafka.start()
        await stack.infra.kafka.wait_ready()

    after = await _run_when_accepted(bob)
    for job_id in [before, *accepted_while_stopping, after]:
        info = await wait_state(bob, job_id, "succeeded", timeout=180)
        assert info["state"] == "succeeded"
    listed = set((await bob.get("/api/list_jobs", params={"limit": 1000})).json()["job_ids"])
    assert {before, after, *accepted_while_stopping} <= listed


async def _run_when_accepted(client: httpx.AsyncClient) -> str:
    async def attempt() -> str | None:
        response = await client.post("/api/job/run", json={"command": "echo after"})
        return str(response.json()["job_id"]) if response.status_code == 201 else None

    return await eventually(attempt, timeout=60, interval=0.5, what="run accepted after Kafka returned")
