"""The router's HTTP client against small servers on loopback: lengths, chunks, reuse, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from services.proxy.http import HttpClient, HttpFailed

Handler = Callable[[bytes], Awaitable[bytes | None]]


@pytest.fixture
async def server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    body = await reader.readexactly(length)
                    answer = await handler(head + body)
                    if answer is None:
                        break
                    writer.write(answer)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        srv = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(srv)
        return f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"

    yield start
    for srv in servers:
        srv.close()


async def test_lengths_chunks_and_kept_connections(server: Callable[[Handler], Awaitable[str]]) -> None:
    seen: list[bytes] = []

    async def handler(request: bytes) -> bytes:
        seen.append(request)
        if request.startswith(b"GET /chunked"):
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n5\r\n\": 1}\r\n0\r\n\r\n"
        return b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"

    url = await server(handler)
    client = HttpClient()
    assert await client.request("POST", f"{url}/run", b'{"x": 1}', {"X-Skyjobs-Task-Id": "t"}) == (201, b"ok")
    assert await client.request("GET", f"{url}/chunked") == (200, b'{"a": 1}')
    assert len(client.idle[("http", "127.0.0.1", int(url.rsplit(":", 1)[1]))]) == 1  # one connection, reused
    assert seen[0].endswith(b'\r\n\r\n{"x": 1}') and b"X-Skyjobs-Task-Id: t" in seen[0]
    assert b"Content-Length: 8" in seen[0]
    await client.close()


async def test_a_kept_connection_closed_by_the_server_is_replaced_once(
        server: Callable[[Handler], Awaitable[str]]) -> None:
    calls = 0

    async def handler(request: bytes) -> bytes:
        nonlocal calls
        calls += 1
        return b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n1"

    url = await server(handler)
    client = HttpClient()
    assert await client.request("GET", f"{url}/me") == (200, b"1")
    for conns in client.idle.values():
        for conn in conns:
            assert conn.transport is not None
            conn.transport.close()  # as if the server's keep-alive timeout had closed it
    await asyncio.sleep(0.01)
    assert await client.request("GET", f"{url}/me") == (200, b"1")
    assert calls == 2
    await client.close()


async def test_failures(server: Callable[[Handler], Awaitable[str]]) -> None:
    async def handler(request: bytes) -> bytes | None:
        if b"/slow" in request:
            await asyncio.sleep(5)
        if b"/big" in request:
            return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
        if b"/garbage" in request:
            return b"SPDY/9 what\r\n\r\n"
        return None  # close without answering

    url = await server(handler)
    client = HttpClient()
    with pytest.raises(HttpFailed, match="closed before the answer"):
        await client.request("GET", f"{url}/close")
    with pytest.raises(HttpFailed, match="over 10"):
        await client.request("GET", f"{url}/big", limit=10)
    with pytest.raises(HttpFailed, match="malformed"):
        await client.request("GET", f"{url}/garbage")
    with pytest.raises(TimeoutError):
        await client.request("GET", f"{url}/slow", timeout=0.2)
    with pytest.raises(HttpFailed, match="cannot connect"):
        await client.request("GET", "http://127.0.0.1:1/me")
    await client.close()
