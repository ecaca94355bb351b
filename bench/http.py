"""A minimal asyncio HTTP/1.1 keep-alive client for load generation, and closed/open-loop drivers.

httpx costs ~0.3-0.5 ms of CPU per request, which on 2 cores shared with the server would be most of
what we measure; this client parses only the status line and Content-Length (~20-40 us per request,
measured and reported by every benchmark as "bench client" CPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson


class HttpError(RuntimeError):
    pass


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._parse()

    def _parse(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self.waiter.set_exception(HttpError(f"response without content-length: {head[:200]!r}"))
            return
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17: stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(self.buf) < total:
            return
        status = int(self.buf[9:12])
        body = bytes(self.buf[end + 4: total])
        del self.buf[:total]
        self.waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(HttpError(f"connection lost: {exc!r}"))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        if self.closed:
            raise HttpError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        try:
            return await self.waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Client:
    """A pool of keep-alive connections to one or more API processes (round-robin on connect)."""

    def __init__(self, urls: Sequence[str], token: str) -> None:
        self.targets = []
        for url in urls:
            hostport = url.removeprefix("http://").rstrip("/")
            host, _, port = hostport.rpartition(":")
            self.targets.append((host, int(port)))
        self.token = token
        self._next = 0
        self.idle: list[_Connection] = []
        self.all: list[_Connection] = []

    async def connect(self) -> _Connection:
        host, port = self.targets[self._next % len(self.targets)]
        self._next += 1
        _, conn = await asyncio.get_running_loop().create_connection(_Connection, host, port)
        self.all.append(conn)
        return conn

    async def acquire(self) -> _Connection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        return await self.connect()

    def release(self, conn: _Connection) -> None:
        if not conn.closed:
            self.idle.append(conn)

    def close(self) -> None:
        for conn in self.all:
            conn.close()
        self.all.clear()
        self.idle.clear()

    # --- request builders (bytes ready to write) -------------------------------------------------

    def _host(self) -> str:
        host, port = self.targets[0]
        return f"{host}:{port}"

    def post_json(self, path: str, body: object) -> bytes:
        payload = orjson.dumps(body)
        return (f"POST {path} HTTP/1.1\r\nHost: {self._host()}\r\nAuthorization: Bearer {self.token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload

    def get(self, path: str, token: str | None = None) -> bytes:
        return (f"GET {path} HTTP/1.1\r\nHost: {self._host()}\r\n"
                f"Authorization: Bearer {token or self.token}\r\n\r\n").encode()

    async def call(self, raw: bytes) -> tuple[int, bytes]:
        conn = await self.acquire()
        try:
            return await conn.request(raw)
        finally:
            self.release(conn)


# ------------------------------------------------------------------------------------------ drivers


@dataclass
class LoadResult:
    started: float  # monotonic
    duration: float
    latencies: list[float] = field(default_factory=list)  # seconds, of successful calls (open loop: from schedule)
    service: list[float] = field(default_factory=list)  # open loop: from the moment the request was written
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    late: int = 0  # open loop: requests sent more than 1 ms after their scheduled time

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.ok / self.duration if self.duration else 0.0


async def closed_loop(client: Client, make: Callable[[], bytes], concurrency: int, duration: float,
                      expect: int, on_ok: Callable[[bytes], None] | None = None) -> LoadResult:
    """`concurrency` connections, each sending its next request as soon as the previous one answered."""
    conns = [await client.connect() for _ in range(concurrency)]
    result = LoadResult(time.monotonic(), duration)
    deadline = result.started + duration

    async def loop(conn: _Connection) -> None:
        while True:
            raw = make()
            t0 = time.perf_counter()
            if time.monotonic() >= deadline:
                return
            try:
                status, body = await conn.request(raw)
            except HttpError as exc:
                result.error(str(exc)[:60])
                return
            if status == expect:
                result.latencies.append(time.perf_counter() - t0)
                if on_ok is not None:
                    on_ok(body)
            else:
                result.statuses[status] = result.statuses.get(status, 0) + 1

    await asyncio.gather(*(loop(c) for c in conns))
    result.duration = time.monotonic() - result.started
    for c in conns:
        client.release(c)
    return result


async def open_loop(client: Client, make: Callable[[int], bytes], rate: float, duration: float, expect: int,
                    on_ok: Callable[[int, bytes, float, float], Awaitable[None] | None] | None = None,
                    max_in_flight: int = 2000, poisson: bool = False) -> LoadResult:
    """Requests at a fixed `rate` for `duration` seconds whatever the answers take (no coordinated
    omission): latency counts from each request's scheduled time, a connection is opened when none is
    idle. `on_ok(i, body, scheduled_perf, answered_perf)` sees each successful answer."""
    total = int(rate * duration)
    result = LoadResult(time.monotonic(), duration)
    t0 = time.perf_counter() + 0.01
    gaps = [random.expovariate(rate) for _ in range(total)] if poisson else [1.0 / rate] * total
    in_flight: set[asyncio.Task[None]] = set()

    async def one(i: int, scheduled: float) -> None:
        raw = make(i)
        try:
            conn = await client.acquire()
        except OSError as exc:
            result.error(f"connect: {exc!r}"[:60])
            return
        sent = time.perf_counter()
        if sent - scheduled > 0.001:
            result.late += 1
        try:
            status, body = await conn.request(raw)
        except HttpError as exc:
            result.error(str(exc)[:60])
            return
        client.release(conn)
        answered = time.perf_counter()
        if status == expect:
            result.latencies.append(answered - scheduled)
            result.service.append(answered - sent)
            if on_ok is not None:
                maybe = on_ok(i, body, scheduled, answered)
                if maybe is not None:
                    await maybe
        else:
            result.statuses[status] = result.statuses.get(status, 0) + 1

    scheduled = t0
    for i in range(total):
        scheduled += gaps[i]
        delay = scheduled - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_in_flight:
            result.error("not sent: too many requests in flight")  # do not pile up more
            continue
        task = asyncio.ensure_future(one(i, scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)
    result.duration = time.monotonic() - result.started
    return result


async def wait_until(probe: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.1,
                     what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, HttpError):
            if await probe():
                return
        await asyncio.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
