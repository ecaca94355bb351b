"""What every example worker service shares: its command line, JSON answers and the uvicorn server."""

from __future__ import annotations

import argparse
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response


def arguments(description: str, default_port: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default_port, help=f"port to listen on (default {default_port})")
    return parser


def answer(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


class TaskError(Exception):
    """The task's arguments are unusable: answered 400, and the proxy does not retry it elsewhere."""


async def task_args(request: Request) -> list[Any]:
    """The `args` of the proxy's `{"task_id": ..., "args": [...]}`."""
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise TaskError("body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("args"), list):
        raise TaskError('body must be {"task_id": ..., "args": [...]}')
    return list(body["args"])


async def on_task_error(request: Request, exc: Exception) -> Response:
    return answer({"error": str(exc)}, 400)


def serve(app: Starlette, host: str, port: int) -> None:
    uvicorn.run(app, host=host, port=port, loop="uvloop", log_level="warning", access_log=False,
                timeout_graceful_shutdown=2)
