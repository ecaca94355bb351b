"""Small local HTTP services for the pipeline conformance suite, served by uvicorn on a free port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infra.local import free_port
from services.pipelines import builtins


@dataclass
class Recorder:
    calls: list[dict[str, Any]] = field(default_factory=list)
    slow_answers: int = 0  # /slow/{ms} calls that have slept and answer


def fixture_app(recorder: Recorder) -> Starlette:
    async def echo(request: Request) -> Response:
        body = await request.body()
        recorder.calls.append({"path": request.url.path, "method": request.method, "body": body,
                               "headers": dict(request.headers), "query": str(request.url.query)})
        data = {"method": request.method, "path": request.url.path, "query": str(request.url.query),
                "body": body.decode(errors="replace"), "auth": request.headers.get("authorization"),
                "name": request.headers.get("content-disposition", "")}
        return Response(orjson.dumps(data), media_type="application/json")

    async def status(request: Request) -> Response:
        code = int(request.path_params["code"])
        return Response(orjson.dumps({"error": f"status {code} as asked"}), code, media_type="application/json")

    async def slow(request: Request) -> Response:
        await asyncio.sleep(int(request.path_params["ms"]) / 1000)
        recorder.slow_answers += 1
        return Response(orjson.dumps({"slept": int(request.path_params["ms"])}), media_type="application/json")

    async def text(request: Request) -> Response:
        return Response("plain words", media_type="text/plain")

    async def sendemail(request: Request) -> Response:
        recorder.calls.append({"path": "/sendemail", "body": await request.body()})
        return Response(orjson.dumps({"sent": True}), media_type="application/json")

    async def double(request: Request) -> Response:
        value = orjson.loads(await request.body())
        return Response(orjson.dumps(value * 2), media_type="application/json")

    app = Starlette(routes=[
        *builtins.ROUTES,
        Route("/echo/{rest:path}", echo, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        Route("/status/{code:int}", status, methods=["GET", "POST", "PUT", "DELETE"]),
        Route("/slow/{ms:int}", slow, methods=["GET", "POST"]),
        Route("/text", text, methods=["GET", "POST"]),
        Route("/sendemail", sendemail, methods=["POST"]),
        Route("/double", double, methods=["POST"]),
    ])
    app.state.documents = builtins.MemoryStore()
    return app


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.ensure_future(server.serve())
    for _ in range(1000):  # uvicorn has no started event to wait on
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
