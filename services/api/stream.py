"""Live streams: `GET /api/stream` sends events as Server-Sent Events, and resumes without gaps.

The process's event tail (tail.py) hands every batch it fetches to the `Fanout`. While anyone
listens, the fan-out reads each record once (its type, stream id and owner) and, at most every
`DISPATCH_INTERVAL`, for each group of subscribers with the same filter, writes the SSE text of all
the events the group wants since the last dispatch, once; every subscriber of the group gets those
same bytes in one write. The work per event is therefore per filter, not per subscriber, and the
writes per subscriber are bounded by the interval, not by the event rate.

An SSE event's id is a position vector: the next offset of every partition of the event topics
right after that event, in the order the fan-out handed records on. A client that reconnects with
`Last-Event-ID` first gets the records between that position and the fan-out's (read from Kafka by
a short-lived consumer, filtered the same way), then the live ones: nothing is skipped and nothing
is sent twice. Offsets are Kafka's, so an id from one API process resumes on another.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from services.api.errors import BadRequest, Forbidden, Unavailable
from services.api.requests import authenticate
from services.api.tail import Batch, EventTail, Position

log = logging.getLogger(__name__)

QUEUE = 10_000  # events a subscriber may fall behind by; then its stream ends (it may resume with Last-Event-ID)
DISPATCH_INTERVAL = 0.02  # seconds: at most one write per subscriber this often, whatever the event rate
PING_INTERVAL = 10.0  # seconds between keep-alive comments to every subscriber
SEND_TIMEOUT = 30.0  # seconds a write may wait for a client that reads nothing; then its stream ends
PING = b": ping\r\n\r\n"
RESUME_WAIT = 10.0  # seconds a resume may wait for this process to reach its Last-Event-ID (another process's)
KNOWN_OWNERS = 200_000


@dataclass(frozen=True)
class Item:
    tp: Position
    offset: int
    raw: bytes
    type: str
    stream_id: str
    owner: str | None

    @property
    def kind(self) -> str:
        return self.type.split(".", 1)[0]


class Filter(NamedTuple):
    """What a subscriber wants; subscribers with equal filters share every byte sent to them."""

    kinds: frozenset[str] | None
    types: frozenset[str] | None
    ids: frozenset[str] | None
    owner: str | None
    named: bool

    def wants(self, item: Item) -> bool:
        if self.ids is not None and item.stream_id not in self.ids:
            return False
        if self.types is not None and item.type not in self.types:
            return False
        if self.kinds is not None and item.kind not in self.kinds:
            return False
        return self.owner is None or item.owner == self.owner


@dataclass(eq=False)
class Subscriber:
    filter: Filter
    chunks: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    behind: int = 0  # events queued, not yet sent
    ended: bool = False
    start: dict[Position, int] = field(default_factory=dict)  # where its live events start (`register`)

    def offer(self, chunk: bytes, events: int) -> None:
        if self.ended:
            return
        self.behind += events
        if self.behind > QUEUE:  # too slow: end its stream; Last-Event-ID resumes it
            self.ended = True
            self.chunks.put_nowait(None)
            return
        self.chunks.put_nowait(chunk)

    async def next(self) -> bytes | None:
        """Everything queued, as one chunk (None: the stream ends)."""
        parts = [await self.chunks.get()]
        while not self.chunks.empty() and parts[-1] is not None:
            parts.append(self.chunks.get_nowait())
        if parts[-1] is None:
            return None
        self.behind = 0
        return parts[0] if len(parts) == 1 else b"".join(p for p in parts if p is not None)


def _parse(raw: bytes) -> tuple[str, str, str | None]:
    try:
        data = orjson.loads(raw)
        owner = data.get("user_id") or data.get("owner_id") or (data.get("spec") or {}).get("user_id")
        return str(data.get("type", "")), str(data.get("stream_id", "")), owner if isinstance(owner, str) else None
    except (orjson.JSONDecodeError, AttributeError):
        return "", "", None


def _merge(lists: list[list[int]]) -> list[int]:
    """Sorted lists of batch positions as one sorted list."""
    if len(lists) == 1:
        return lists[0]
    return sorted(i for part in lists for i in part)


def encode_id(vector: Iterable[int]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(vector))).decode().rstrip("=")


def message(item: Item, event_id: str, named: bool) -> bytes:
    """One SSE event, its lines ended by CRLF."""
    head = f"id: {event_id}\r\nevent: {item.type}\r\n" if named else f"id: {event_id}\r\n"
    raw = item.raw
    if b"\n" in raw or b"\r" in raw:  # JSON may span lines (whitespace): one data field per line
        data = b"".join(b"data: " + line + b"\r\n" for line in raw.splitlines())
    else:
        data = b"data: " + raw + b"\r\n"
    return head.encode() + data + b"\r\n"


class Fanout:
    """Hands the tail's events to the SSE subscribers, grouped by filter (module docstring)."""

    def __init__(self, tail: EventTail, pool: asyncpg.Pool) -> None:
        self.tail = tail
        self.pool = pool
        self.order = tail.order
        self._index = {tp: i for i, tp in enumerate(self.order)}
        self.positions: dict[Position, int] = dict(tail.positions)  # handed to subscribers up to here
        self._vector = [self.positions[tp] for tp in self.order]
        self.groups: dict[Filter, set[Subscriber]] = {}
        self.owners: dict[str, str] = {}  # stream id -> owner, learnt from first events and the database
        self._inbox: list[Batch] = []
        self._wake = asyncio.Event()
        self._advanced = asyncio.Event()
        self._last_dispatch = 0.0
        self._task: asyncio.Task[None] | None = None
        self._unfollow: Any = None

    def start(self) -> None:
        self._unfollow = self.tail.follow(self._on_batch)
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._unfollow is not None:
            self._unfollow()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # --- subscribers -------------------------------------------------------------------------------

    async def register(self, subscriber: Subscriber) -> None:
        """Add a subscriber; `subscriber.start` is the position its live events start after (nothing
        falls between). Before the response's headers go: the client may act on them at once."""
        if await self.tail.want():  # the on-demand topics were not read: they start from their end now
            for tp in self.order:
                if tp[0] in self.tail.on_demand:
                    self._set(tp, max(self.positions[tp], self.tail.positions[tp]))
        self.groups.setdefault(subscriber.filter, set()).add(subscriber)
        subscriber.start = dict(self.positions)

    def unregister(self, subscriber: Subscriber) -> None:
        self.tail.unwant()
        group = self.groups.get(subscriber.filter)
        if group is not None:
            group.discard(subscriber)
            if not group:
                del self.groups[subscriber.filter]

    async def reach(self, position: dict[Position, int], timeout: float) -> bool:
        """Wait until the fan-out has handed on everything before `position`; False if it did not in time."""
        deadline = time.monotonic() + timeout
        while any(self.positions.get(tp, 0) < offset for tp, offset in position.items()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._advanced.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), remaining)
        return True

    # --- the fan-out loop --------------------------------------------------------------------------

    def _on_batch(self, batch: Batch) -> None:
        self._inbox.append(batch)
        self._wake.set()

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL)
            for subscribers in list(self.groups.values()):
                for subscriber in list(subscribers):
                    subscriber.offer(PING, 0)

    async def _run(self) -> None:
        pinger = asyncio.ensure_future(self._ping())
        try:
            await self._fan_out()
        finally:
            pinger.cancel()

    async def _fan_out(self) -> None:
        while True:
            await self._wake.wait()
            if self.groups:  # at most one dispatch per interval: the batches meanwhile go together
                wait = self._last_dispatch + DISPATCH_INTERVAL - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            self._wake.clear()
            batches, self._inbox = [self._fresh(b) for b in self._inbox], []
            try:
                if not self.groups:  # nobody listens: only keep the position (owners come from the database)
                    self._advance(batches)
                    continue
                items = await self.items(batches)
                self._dispatch(items)  # synchronous: a subscriber registers before or after it, never during
                self._last_dispatch = time.monotonic()
            except Exception:
                log.exception("event stream: a dispatch failed; its events were skipped")
                self._advance(batches)

    def _fresh(self, batch: Batch) -> Batch:
        """`batch` without the records before the position: an on-demand topic's batch still in the
        inbox when `register` moved that topic's position to its end."""
        if all(records[0].offset >= self.positions.get(tp, 0) for tp, records in batch.items()):
            return batch
        fresh = {tp: [r for r in records if r.offset >= self.positions.get(tp, 0)] for tp, records in batch.items()}
        return {tp: records for tp, records in fresh.items() if records}

    def _advance(self, batches: list[Batch]) -> None:
        for batch in batches:
            for tp, records in batch.items():
                self._set(tp, records[-1].offset + 1)
        self._advanced.set()

    def _set(self, tp: Position, offset: int) -> None:
        self.positions[tp] = offset
        index = self._index.get(tp)
        if index is not None:
            self._vector[index] = offset

    def _dispatch(self, items: list[Item]) -> None:
        vectors = []
        for item in items:
            self._set(item.tp, item.offset + 1)
            vectors.append(tuple(self._vector))
        self._advanced.set()
        if not items:
            return
        # Indexes of the batch, so that a group looks only at the events its filter can match.
        by_type: dict[str, list[int]] = defaultdict(list)
        by_stream: dict[str, list[int]] = defaultdict(list)
        by_owner: dict[str | None, list[int]] = defaultdict(list)
        narrow = any(f.ids is not None or f.owner is not None for f in self.groups)
        for i, item in enumerate(items):
            by_type[item.type].append(i)
            if narrow:
                by_stream[item.stream_id].append(i)
                by_owner[item.owner].append(i)
        ids: dict[int, str] = {}
        messages: dict[tuple[int, bool], bytes] = {}
        chunks: dict[tuple[bool, tuple[int, ...]], bytes] = {}  # groups that want the same events share bytes
        for key, subscribers in list(self.groups.items()):
            rest = key
            if key.ids is not None:
                candidates = _merge([by_stream[i] for i in key.ids if i in by_stream])
                rest = key._replace(ids=None)
            elif key.owner is not None:
                candidates = by_owner.get(key.owner, [])
                rest = key._replace(owner=None)
            elif key.types is not None:
                candidates = _merge([by_type[t] for t in key.types if t in by_type])
                rest = key._replace(types=None)
            else:
                candidates = list(range(len(items)))
            if rest.ids is None and rest.types is None and rest.kinds is None and rest.owner is None:
                wanted = tuple(candidates)
            else:
                wanted = tuple(i for i in candidates if rest.wants(items[i]))
            if not wanted:
                continue
            chunk = chunks.get((key.named, wanted))
            if chunk is None:
                parts = []
                for i in wanted:
                    text = messages.get((i, key.named))
                    if text is None:
                        event_id = ids.get(i) or ids.setdefault(i, encode_id(vectors[i]))
                        text = messages[(i, key.named)] = message(items[i], event_id, key.named)
                    parts.append(text)
                chunk = chunks[(key.named, wanted)] = b"".join(parts)
            for subscriber in list(subscribers):
                subscriber.offer(chunk, len(wanted))

    async def items(self, batches: Iterable[Batch]) -> list[Item]:
        parsed = []
        unknown = set()
        for batch in batches:
            for tp, records in batch.items():
                for r in records:
                    type_, stream_id, owner = _parse(r.value)
                    if owner is not None:
                        self.owners.setdefault(stream_id, owner)
                    elif stream_id not in self.owners:
                        unknown.add(stream_id)
                    parsed.append((tp, r.offset, r.value, type_, stream_id))
        if unknown:
            with contextlib.suppress(Exception):
                rows = await self.pool.fetch("SELECT stream_id, owner FROM stream_owners WHERE stream_id = ANY($1)",
                                             list(unknown))
                self.owners.update({r["stream_id"]: r["owner"] for r in rows})
        if len(self.owners) > KNOWN_OWNERS:
            self.owners.clear()
        return [Item(tp, offset, raw, t, s, self.owners.get(s)) for tp, offset, raw, t, s in parsed]

    # --- resuming ----------------------------------------------------------------------------------

    def decode(self, last_event_id: str) -> dict[Position, int]:
        try:
            vector = orjson.loads(base64.urlsafe_b64decode(last_event_id + "==="))
            if not isinstance(vector, list) or len(vector) != len(self.order):
                raise ValueError
            return {tp: int(v) for tp, v in zip(self.order, vector, strict=True)}
        except (ValueError, TypeError, orjson.JSONDecodeError):
            raise BadRequest("Last-Event-ID is not an id this stream sent") from None

    async def backlog(self, start: dict[Position, int], end: dict[Position, int],
                      wanted: Filter) -> AsyncIterator[bytes]:
        """The SSE text of the records in [start, end) of every partition that `wanted` wants, read from
        Kafka, in chunks (ids: `start` advanced past each record)."""
        ranges = {tp: (start[tp], end[tp]) for tp in self.order if start[tp] < end[tp]}
        if not ranges:
            return
        position = [start[tp] for tp in self.order]
        consumer = AIOKafkaConsumer(bootstrap_servers=self.tail.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(*tp) for tp in ranges])
            for tp, (first, _) in ranges.items():
                consumer.seek(TopicPartition(*tp), first)
            remaining = dict(ranges)
            while remaining:
                fetched = await consumer.getmany(*[TopicPartition(*tp) for tp in remaining], timeout_ms=500)
                kept = {}
                for tp, records in fetched.items():
                    key = (tp.topic, tp.partition)
                    if key not in remaining:
                        continue
                    kept[key] = [r for r in records if r.offset < remaining[key][1]]
                    if records and records[-1].offset + 1 >= remaining[key][1]:
                        del remaining[key]
                parts = []
                for item in await self.items([kept]):
                    position[self._index[item.tp]] = item.offset + 1
                    if wanted.wants(item):
                        parts.append(message(item, encode_id(position), wanted.named))
                if parts:
                    yield b"".join(parts)
        finally:
            await consumer.stop()


def _set(value: str | None) -> frozenset[str] | None:
    return frozenset(v.strip() for v in value.split(",") if v.strip()) if value else None


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
    fanout: Fanout = request.app.state.fanout
    wanted = Filter(_set(params.get("kind")), _set(params.get("type")), ids, owner, named)
    resume = request.headers.get("last-event-id")
    start = fanout.decode(resume) if resume else None
    # An id from a process further on: wait until this one got there, or its live events would repeat some.
    if start is not None and not await fanout.reach(start, RESUME_WAIT):
        raise Unavailable("this server has not reached that Last-Event-ID yet; retry")
    subscriber = Subscriber(wanted)

    async def events() -> AsyncIterator[bytes]:
        if start is not None:
            async for old in fanout.backlog(start, subscriber.start, wanted):
                yield old
        while (live := await subscriber.next()) is not None:
            yield live

    # Registered when the response starts: a request that goes away before never registers.
    return EventStream(events(), lambda: fanout.register(subscriber), lambda: fanout.unregister(subscriber))


class EventStream(Response):
    """A `text/event-stream` response of already framed chunks: one ASGI send per chunk.

    (sse-starlette, used before, wraps every send in an anyio cancel scope: with 200 subscribers
    that was a quarter of the API's CPU.) The client going away cancels the stream.
    """

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes], opening: Callable[[], Awaitable[None]],
                 closing: Callable[[], None]) -> None:
        self.chunks = chunks
        self.opening = opening  # before the headers go
        self.closing = closing  # after the last chunk, whatever ended the stream
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        gone = asyncio.Event()

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            streaming.cancel()

        await self.opening()
        watcher = asyncio.ensure_future(until_disconnect())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.chunks:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
            streaming.uncancel()  # the client left: the stream simply ends
        except TimeoutError:
            log.info("event stream: the client read nothing for %g s; ending its stream", SEND_TIMEOUT)
        finally:
            watcher.cancel()
            self.closing()
            await self.chunks.aclose()  # type: ignore[attr-defined]


ROUTES = [Route("/api/stream", stream, methods=["GET"])]
