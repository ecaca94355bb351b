"""The echo service: GET /me, POST /run {"task_id", "args": [value, delay]} -> {"value", "instance"}."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from workers.serving import TaskError, answer, on_task_error, task_args


def create_app(name: str = "echo_service", label: str = "echo", max_concurrency: int | None = None,
               fail: bool = False) -> Starlette:
    me: dict[str, Any] = {
        "name": name,
        "description": "Answers its value back, after `delay` seconds.",
        "input": [
            {"argument_name": "value", "argument_description": "any JSON value", "type": "json"},
            {"argument_name": "delay", "argument_description": "seconds to wait before answering", "type": "float"},
        ],
        "task_path": "/run",
    }
    if max_concurrency:
        me["max_concurrency"] = max_concurrency

    async def describe(request: Request) -> Response:
        return answer(me)

    async def run(request: Request) -> Response:
        args = await task_args(request)
        if len(args) != 2:
            raise TaskError("expected 2 arguments: value, delay")
        value, delay = args
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not math.isfinite(delay) or delay < 0:
            raise TaskError("delay must be a number of seconds, at least 0")
        if delay:
            await asyncio.sleep(min(delay, 3600))
        if fail:
            return answer({"error": f"{label} fails every task (--fail)"}, 500)
        return answer({"value": value, "instance": label})

    return Starlette(routes=[Route("/me", describe, methods=["GET"]), Route("/run", run, methods=["POST"])],
                     exception_handlers={TaskError: on_task_error})
