"""Live streams: `GET /api/stream` sends events as Server-Sent Events, and resumes without gaps.

One Kafka consumer per API process tails every event topic (no consumer group: each API process
sees everything) and fans out to the subscribers. An SSE event's id is the subscriber's position
in every partition after that event; a client that reconnects with `Last-Event-ID` first gets the
records between that position and the tail's (read from Kafka by a short-lived consumer), then
the live ones: nothing is skipped and nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api.errors import BadRequest, Forbidden
from services.api.requests import authenticate
from services.config import User

log = logging.getLogger(__name__)

QUEUE = 10_000  # a subscriber this far behind is disconnected (it may resume with Last-Event-ID)
Position = tuple[str, int]


@dataclass(frozen=True)
class Item:
    tp: Position
    offset: int
    raw: bytes
    type: str
    stream_id: str
    owner: str | None


@dataclass(eq=False)
class Subscriber:
    user: User
    kinds: set[str] | None
    types: set[str] | None
    ids: set[str] | None
    owner: str | None
    queue: asyncio.Queue[Item | None] = field(default_factory=lambda: asyncio.Queue(QUEUE))

    def wants(self, item: Item) -> bool:
        if self.ids is not None and item.stream_id not in self.ids:
            return False
        if self.types is not None and item.type not in self.types:
            return False
        if self.kinds is not None and item.type.split(".", 1)[0] not in self.kinds:
            return False
        if self.owner is not None and item.owner != self.owner:
            return False
        return True

    def offer(self, item: Item) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:  # too slow: end its stream; Last-Event-ID resumes it
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(None)


def _parse(raw: bytes) -> tuple[str, str, str | None]:
    try:
        data = orjson.loads(raw)
        owner = data.get("user_id") or data.get("owner_id") or (data.get("spec") or {}).get("user_id")
        return str(data.get("type", "")), str(data.get("stream_id", "")), owner if isinstance(owner, str) else None
    except (orjson.JSONDecodeError, AttributeError):
        return "", "", None


class EventTail:
    """Tails the event topics from their end and fans each record out to the subscribers."""

    def __init__(self, bootstrap: str, topics: tuple[str, ...], pool: asyncpg.Pool) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.pool = pool
        self.order: list[Position] = []
        self.positions: dict[Position, int] = {}
        self.subscribers: set[Subscriber] = set()
        self.owners: dict[str, str] = {}  # stream id -> owner, learnt from first events and the database
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                          fetch_max_wait_ms=20)
        await self._consumer.start()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics(list(self.topics))
        finally:
            await admin.close()
        tps = [TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:
            self.positions[(tp.topic, tp.partition)] = await self._consumer.position(tp)
        self.order = sorted(self.positions)
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer:
            with contextlib.suppress(Exception):
                await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            except Exception:
                log.exception("event tail: fetch failed; retrying")
                await asyncio.sleep(1)
                continue
            if not self.subscribers:  # nobody listens: only keep the position (owners come from the database)
                for tp, records in batch.items():
                    if records:
                        self.positions[(tp.topic, tp.partition)] = records[-1].offset + 1
                continue
            items = await self.items(batch)
            for item in items:
                self.positions[item.tp] = item.offset + 1
                for subscriber in list(self.subscribers):
                    if subscriber.wants(item):
                        subscriber.offer(item)

    async def items(self, batch: dict[TopicPartition, list[Any]]) -> list[Item]:
        parsed = []
        unknown = set()
        for tp, records in batch.items():
            for r in records:
                type_, stream_id, owner = _parse(r.value)
                if owner is not None:
                    self.owners.setdefault(stream_id, owner)
                elif stream_id not in self.owners:
                    unknown.add(stream_id)
                parsed.append(((tp.topic, tp.partition), r.offset, r.value, type_, stream_id))
        if unknown:
            with contextlib.suppress(Exception):
                rows = await self.pool.fetch("SELECT stream_id, owner FROM stream_owners WHERE stream_id = ANY($1)",
                                             list(unknown))
                self.owners.update({r["stream_id"]: r["owner"] for r in rows})
        if len(self.owners) > 200_000:
            self.owners.clear()
        return [Item(tp, offset, raw, t, s, self.owners.get(s)) for tp, offset, raw, t, s in parsed]

    def encode(self, positions: dict[Position, int]) -> str:
        vector = [positions.get(tp, 0) for tp in self.order]
        return base64.urlsafe_b64encode(orjson.dumps(vector)).decode().rstrip("=")

    def decode(self, last_event_id: str) -> dict[Position, int]:
        try:
            vector = orjson.loads(base64.urlsafe_b64decode(last_event_id + "==="))
            if not isinstance(vector, list) or len(vector) != len(self.order):
                raise ValueError
            return {tp: int(v) for tp, v in zip(self.order, vector, strict=True)}
        except (ValueError, TypeError, orjson.JSONDecodeError):
            raise BadRequest("Last-Event-ID is not an id this stream sent") from None

    async def backlog(self, start: dict[Position, int], end: dict[Position, int]) -> AsyncIterator[Item]:
        """Records in [start, end) of every partition, read from Kafka."""
        wanted = {tp: (start[tp], end[tp]) for tp in self.order if start[tp] < end[tp]}
        if not wanted:
            return
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(*tp) for tp in wanted])
            for tp, (first, _) in wanted.items():
                consumer.seek(TopicPartition(*tp), first)
            remaining = dict(wanted)
            while remaining:
                batch = await consumer.getmany(*[TopicPartition(*tp) for tp in remaining], timeout_ms=500)
                kept = {tp: [r for r in rs if r.offset < remaining[(tp.topic, tp.partition)][1]]
                        for tp, rs in batch.items()}
                for item in await self.items(kept):
                    yield item
                for tp, records in batch.items():
                    key = (tp.topic, tp.partition)
                    if key in remaining and records and records[-1].offset + 1 >= remaining[key][1]:
                        del remaining[key]
        finally:
            await consumer.stop()


def _set(value: str | None) -> set[str] | None:
    return {v.strip() for v in value.split(",") if v.strip()} if value else None


STREAM_PARAMS = {"kind", "id", "type", "user", "access_token", "named"}


async def stream(request: Request) -> Response:
    # Browsers' EventSource cannot send headers: the token may come as ?access_token= here.
    user = authenticate(request, allow_query_token=True)
    params = request.query_params
    unknown = sorted(set(params) - STREAM_PARAMS)
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r}; allowed: {', '.join(sorted(STREAM_PARAMS))}")
    owner = params.get("user")
    if not user.is_admin:
        if owner not in (None, user.user_id):
            raise Forbidden("only an admin may stream another user's events")
        owner = user.user_id
    ids = _set(params.get("id"))
    if ids:  # accept a UUID in either spelling
        ids |= {i.replace("-", "") for i in ids} | {f"{i[:8]}-{i[8:12]}-{i[12:16]}-{i[16:20]}-{i[20:]}" for i in ids
                                                     if len(i) == 32}
    named = params.get("named", "1") != "0"  # named=0: no `event:` field, so EventSource.onmessage sees all
    tail: EventTail = request.app.state.tail
    subscriber = Subscriber(user, _set(params.get("kind")), _set(params.get("type")), ids, owner)
    resume = request.headers.get("last-event-id")
    start = tail.decode(resume) if resume else None
    snapshot = dict(tail.positions)  # taken in the same step as the registration: nothing falls between
    tail.subscribers.add(subscriber)

    async def events() -> AsyncIterator[dict[str, str]]:
        position = dict(start or snapshot)
        try:
            if start is not None:
                async for item in tail.backlog(start, snapshot):
                    position[item.tp] = item.offset + 1
                    if subscriber.wants(item):
                        yield _message(item, tail.encode(position), named)
            while True:
                live = await subscriber.queue.get()
                if live is None:
                    return
                position[live.tp] = live.offset + 1
                yield _message(live, tail.encode(position), named)
        finally:
            tail.subscribers.discard(subscriber)

    return EventSourceResponse(events(), ping=10, send_timeout=30)


def _message(item: Item, event_id: str, named: bool) -> dict[str, str]:
    message = {"id": event_id, "data": item.raw.decode()}
    if named:
        message["event"] = item.type
    return message


ROUTES = [Route("/api/stream", stream, methods=["GET"])]
