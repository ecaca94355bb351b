"""The trivial local service the pipeline benchmark calls: `python -m bench.pipeline_service --port N`.

    GET|POST /t      answers the body it got (or `{}`) as JSON, at once
    GET /slow        answers `{}` after 100 ms
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def trivial(request: Request) -> Response:
    return Response(await request.body() or b"{}", media_type="application/json")


async def slow(request: Request) -> Response:
    await asyncio.sleep(0.1)
    return Response(b"{}", media_type="application/json")


async def slowpost(request: Request) -> Response:
    await asyncio.sleep(5)
    return Response(b"{}", media_type="application/json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    app = Starlette(routes=[Route("/t", trivial, methods=["GET", "POST"]), Route("/slow", slow, methods=["GET"]),
                            Route("/slowpost", slowpost, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
