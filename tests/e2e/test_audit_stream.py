"""The event log put to work: entity history, log search, live SSE with resume, Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from tests.conftest import Stack, eventually, wait_state


async def test_history_of_a_job_is_its_ordered_events(alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    job_id = (await alice.post("/api/job/run", json={"command": "echo audit"})).json()["job_id"]
    await wait_state(alice, job_id, "succeeded")

    async def full() -> dict[str, Any] | None:
        response = await alice.get(f"/api/history/job/{job_id}")
        body = response.json() if response.status_code == 200 else None
        return body if body and body["events"][-1]["type"] == "job.succeeded.v1" else None

    history = await eventually(full, timeout=30, what="the job's history up to succeeded")
    types = [e["type"] for e in history["events"] if e["type"] != "job.heartbeat-recorded.v1"]
    assert types == ["job.submitted.v1", "job.started.v1", "job.succeeded.v1"]
    sequences = [e["sequence"] for e in history["events"]]
    assert sequences == list(range(1, len(sequences) + 1))  # the whole stream, in order
    first = history["events"][0]
    assert first["actor"] == "alice" and first["data"]["command"] == "echo audit" and first["correlation_id"]
    causes = [e["causation_id"] for e in history["events"]]
    assert all(causes) and causes[0] not in causes[1:]  # the run command; then the executor's (a short
    # job's start and finish are decided from one job.finish command, so they may share a cause)
    assert (await bob.get(f"/api/history/job/{job_id}")).status_code == 403
    assert (await alice.get("/api/history/job/not-a-uuid")).status_code == 400
    assert (await alice.get("/api/history/planet/x")).status_code == 400
    search = (await alice.get("/api/history", params={"type": "job.succeeded.v1", "limit": 1000})).json()
    assert any(e["stream_id"] == job_id for e in search["events"])
    assert all(e["type"] == "job.succeeded.v1" for e in search["events"])
    others = (await bob.get("/api/history", params={"kind": "job", "limit": 1000})).json()["events"]
    assert all(e["stream_id"] != job_id for e in others)


async def _events(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    event: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if "data" in event:
                yield event
            event = {}
            continue
        key, _, value = line.partition(": ")
        if key in ("event", "id", "data"):
            event[key] = value


async def _collect(response: httpx.Response, count: int, stream_id: str | None = None) -> list[dict[str, str]]:
    received: list[dict[str, str]] = []
    async for event in _events(response):
        if stream_id is None or orjson.loads(event["data"])["stream_id"] == stream_id:
            received.append(event)
            if len(received) >= count:
                break
    return received


LIFECYCLE = "job.submitted.v1,job.started.v1,job.succeeded.v1"


async def test_sse_streams_live_and_resumes_without_gaps(stack: Stack, alice: httpx.AsyncClient) -> None:
    async with stack.client("alice") as client, client.stream(
        "GET", "/api/stream", params={"type": LIFECYCLE}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        job_id = (await alice.post("/api/job/run", json={"command": "echo live"})).json()["job_id"]
        live = await asyncio.wait_for(_collect(response, 3, job_id), 30)
    assert [e["event"] for e in live] == ["job.submitted.v1", "job.started.v1", "job.succeeded.v1"]
    # resume after the first event: exactly the two that followed come, with the same ids
    async with stack.client("alice") as client, client.stream(
        "GET", "/api/stream", params={"type": LIFECYCLE, "id": job_id},
        headers={"Last-Event-ID": live[0]["id"]}) as response:
        resumed = await asyncio.wait_for(_collect(response, 2), 30)
    assert [e["event"] for e in resumed] == ["job.started.v1", "job.succeeded.v1"]
    assert [orjson.loads(e["data"])["stream_id"] for e in resumed] == [job_id, job_id]
    async with stack.client("alice") as client:
        bad = await client.get("/api/stream", headers={"Last-Event-ID": "garbage"})
        assert bad.status_code == 400


async def test_sse_of_a_topic_read_only_while_someone_streams(stack: Stack, alice: httpx.AsyncClient,
                                                              admin: httpx.AsyncClient) -> None:
    """file-events are read by the API only while a stream is open: a stream starts at the topic's end
    then (nothing from before it), sees what follows, and resumes from its ids; /metrics still counts
    the topic's unprojected events meanwhile."""

    async def upload(name: str) -> str:
        return str((await alice.post("/api/files", content=b"x", params={"name": name})).json()["file_id"])

    before = await upload("before.txt")  # nobody streams: the API does not read it
    async with stack.client("alice") as client, client.stream(
        "GET", "/api/stream", params={"type": "file.stored.v1"}) as response:
        during = [await upload("during-1.txt"), await upload("during-2.txt")]
        live = await asyncio.wait_for(_collect(response, 2), 30)
    streams = [orjson.loads(e["data"])["stream_id"] for e in live]
    assert sorted(streams) == sorted(during), (before, streams)  # two partitions: in either order
    after = await upload("after.txt")  # nobody streams again
    async with stack.client("alice") as client, client.stream(
        "GET", "/api/stream", params={"type": "file.stored.v1"}, headers={"Last-Event-ID": live[0]["id"]}) as response:
        resumed = await asyncio.wait_for(_collect(response, 2), 30)
    assert sorted(orjson.loads(e["data"])["stream_id"] for e in resumed) == sorted([streams[1], after])

    async def file_events_projected() -> bool:
        text = (await admin.get("/metrics")).text
        return 'skyjobs_projection_lag_events{topic="skyjobs.file-events"} 0.0' in text

    await eventually(file_events_projected, timeout=30, what="/metrics to show file-events projected")


async def test_the_tail_reads_an_on_demand_topic_only_while_wanted(stack: Stack) -> None:
    """EventTail on real Kafka: while nobody wants file-events its positions stay and `ends()` reads
    Kafka's; `want()` jumps to the end, so only what is written after it is handed on."""
    from aiokafka import AIOKafkaProducer

    from events.base import new_id, utcnow
    from events.codec import encode
    from events.files import FileStored
    from events.topics import FILE_EVENTS
    from services.api.tail import Batch, EventTail

    def stored() -> tuple[str, bytes]:
        file_id = new_id()
        return file_id, encode(FileStored(event_id=new_id(), stream_id=file_id, sequence=1, occurred_at=utcnow(),
                                          correlation_id=file_id, actor="alice", owner_id="alice", name="t.txt",
                                          size=0, sha256="0" * 64, content_type="text/plain"))

    tail = EventTail(stack.infra.kafka_bootstrap, (FILE_EVENTS,), (FILE_EVENTS,))
    await tail.start()
    producer = AIOKafkaProducer(bootstrap_servers=stack.infra.kafka_bootstrap)
    await producer.start()
    handed: list[bytes] = []

    def follower(batch: Batch) -> None:
        handed.extend(r.value for records in batch.values() for r in records)

    stop = tail.follow(follower)
    try:
        at_start = dict(tail.positions)
        earlier = []
        for _ in range(3):
            file_id, value = stored()
            earlier.append(value)
            await producer.send_and_wait(FILE_EVENTS, value, key=file_id.encode())
        ends = await tail.ends()
        assert sum(ends.values()) - sum(at_start.values()) >= 3
        assert tail.positions == at_start and handed == []  # not read: nobody wants it
        assert await tail.want() is True
        assert all(tail.positions[tp] >= end for tp, end in ends.items())  # jumped to the end
        assert await tail.want() is False  # already read: no second jump
        file_id, value = stored()
        await producer.send_and_wait(FILE_EVENTS, value, key=file_id.encode())

        async def handed_on() -> bool:
            return value in handed

        await eventually(handed_on, timeout=30, what="the record written after want")
        assert not set(earlier) & set(handed)  # nothing from before the jump
        tail.unwant()
        tail.unwant()
        file_id, late = stored()
        await producer.send_and_wait(FILE_EVENTS, late, key=file_id.encode())
        assert sum((await tail.ends()).values()) > sum(tail.positions.values())  # paused again
    finally:
        stop()
        await producer.stop()
        await tail.stop()


async def test_sse_users_only_see_their_own(stack: Stack, alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    async with stack.client("bob") as client, client.stream(
        "GET", "/api/stream", params={"type": "job.submitted.v1"}) as response:
        await alice.post("/api/job/run", json={"command": "true"})
        bobs = (await bob.post("/api/job/run", json={"command": "true"})).json()["job_id"]
        (first,) = await asyncio.wait_for(_collect(response, 1), 30)
    assert orjson.loads(first["data"])["stream_id"] == bobs
    assert (await bob.get("/api/stream", params={"user": "alice"})).status_code == 403


async def test_metrics(admin: httpx.AsyncClient) -> None:
    text = (await admin.get("/metrics")).text
    for name in ("skyjobs_jobs{state=\"succeeded\"}", "skyjobs_queue_depth", "skyjobs_projection_lag_events",
                 "skyjobs_job_latency_seconds", "skyjobs_projection_last_commit_age_seconds"):
        assert name in text, name


async def test_an_old_event_version_in_the_log_is_upcast_when_read(stack: Stack, alice: httpx.AsyncClient) -> None:
    from aiokafka import AIOKafkaProducer

    from events.base import new_id, utcnow
    from events.topics import FILE_EVENTS

    file_id = new_id()
    old = {"type": "file.stored.v0", "event_id": new_id(), "stream_id": file_id, "sequence": 1,
           "occurred_at": utcnow().isoformat(), "correlation_id": file_id, "owner": "alice", "bytes": 3,
           "name": "legacy.txt"}
    producer = AIOKafkaProducer(bootstrap_servers=stack.infra.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(FILE_EVENTS, orjson.dumps(old), key=file_id.encode())
    finally:
        await producer.stop()

    async def projected() -> dict[str, Any] | None:
        response = await alice.get(f"/api/history/file/{file_id}")
        return response.json() if response.status_code == 200 else None

    history = await eventually(projected, timeout=30, what="the v0 event projected")
    (event,) = history["events"]
    assert event["type"] == "file.stored.v1" and event["data"]["owner"] == "alice"  # the log itself is unchanged
    assert (await alice.get(f"/api/files/{file_id}")).status_code == 410  # known (upcast), bytes never stored


async def test_sse_burst_shared_by_subscribers_resumes_mid_write_exactly(stack: Stack) -> None:
    """Events arrive many to a write; a client that stops halfway through one and resumes from the last
    id it read gets exactly the rest, and a second client with the same filter gets every event once."""
    from aiokafka import AIOKafkaProducer

    from events.base import new_id, utcnow
    from events.codec import encode
    from events.jobs import JobHeartbeat
    from events.topics import JOB_EVENTS

    marker = f"burst-{new_id()}"  # an executor id only this test's events carry
    params = {"type": "job.heartbeat-recorded.v1"}

    async def mine(response: httpx.Response, count: int) -> list[dict[str, str]]:
        received: list[dict[str, str]] = []
        async for event in _events(response):
            if orjson.loads(event["data"])["executor_id"] == marker:
                received.append(event)
                if len(received) >= count:
                    break
        return received

    total = 400
    async with stack.client("admin") as first, stack.client("admin") as second, \
            first.stream("GET", "/api/stream", params=params) as one, \
            second.stream("GET", "/api/stream", params=params) as other:
        producer = AIOKafkaProducer(bootstrap_servers=stack.infra.kafka_bootstrap, linger_ms=5)
        await producer.start()
        sent = []
        try:
            for _ in range(total):
                job_id = new_id()
                event = JobHeartbeat(event_id=new_id(), stream_id=job_id, sequence=2, occurred_at=utcnow(),
                                     correlation_id=job_id, executor_id=marker, attempt=1)
                sent.append(event.event_id)
                await producer.send(JOB_EVENTS, encode(event), key=job_id.encode())
            await producer.flush()
        finally:
            await producer.stop()
        head = await asyncio.wait_for(mine(one, 150), 30)  # then this client goes away mid-stream
        everything = await asyncio.wait_for(mine(other, total), 30)
    async with stack.client("admin") as again, again.stream(
            "GET", "/api/stream", params=params, headers={"Last-Event-ID": head[-1]["id"]}) as resumed:
        rest = await asyncio.wait_for(mine(resumed, total - 150), 30)
    ids = [orjson.loads(e["data"])["event_id"] for e in head + rest]
    assert len(ids) == len(set(ids)) == total and set(ids) == set(sent)
    assert sorted(orjson.loads(e["data"])["event_id"] for e in everything) == sorted(sent)
    assert [e["id"] for e in everything[:150]] == [e["id"] for e in head]  # the same ids for the same events
