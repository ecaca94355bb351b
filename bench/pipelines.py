"""Pipeline engine figures (seed 002), in process against a local uvicorn service:

    python -m bench.pipelines

- per-step overhead: a 1-step pipeline vs calling the same trivial service directly (p50, p99);
- 10 parallel branches of a 100 ms service (wall time);
- runs per second of a 3-step serial pipeline against a trivial service (32 concurrent callers).
The engine here is the one the API runs; the API's own HTTP and Postgres run record are not included.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.pipelines.engine import Caller, Engine, HttpTransport, Settings
from services.pipelines.messages import Message
from services.pipelines.spec import parse
from tests.unit.pipeline_services import serving


async def trivial(request: Request) -> Response:
    return Response(await request.body() or b"{}", media_type="application/json")


async def slow(request: Request) -> Response:
    await asyncio.sleep(0.1)
    return Response(b"{}", media_type="application/json")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def main() -> None:
    app = Starlette(routes=[Route("/t", trivial, methods=["GET", "POST"]), Route("/slow", slow, methods=["GET"])])
    async with serving(app) as url:
        client = httpx.AsyncClient()
        engine = Engine(HttpTransport(client), Settings(self_url=url))
        one = parse(["GET /t"])
        for _ in range(200):
            await engine.run(one, Message(), Caller("GET"))
            await client.get(f"{url}/t")
        direct, piped = [], []
        for _ in range(2000):
            t = time.perf_counter()
            await client.get(f"{url}/t")
            direct.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await engine.run(one, Message(), Caller("GET"))
            piped.append((time.perf_counter() - t) * 1000)
        over = [p - d for p, d in zip(sorted(piped), sorted(direct), strict=True)]
        print(f"direct p50 {statistics.median(direct):.2f} ms; pipeline p50 {statistics.median(piped):.2f} ms")
        print(f"per-step overhead p50 {pct(over, 0.5):.2f} ms, p99 {pct(over, 0.99):.2f} ms")
        fan = parse([["GET /slow"] * 10, "jsonObject"])
        await engine.run(fan, Message(), Caller("GET"))
        walls = []
        for _ in range(10):
            t = time.perf_counter()
            await engine.run(fan, Message(), Caller("GET"))
            walls.append((time.perf_counter() - t) * 1000)
        print(f"10 parallel branches of 100 ms: median {statistics.median(walls):.1f} ms, max {max(walls):.1f} ms")
        three = parse(["POST /t", "POST /t", "POST /t"])
        done = 0
        stop = time.perf_counter() + 5

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                r = await engine.run(three, Message(headers={"content-type": "application/json"}, body=b"{}"), Caller("POST"))
                assert r.status == 200
                done += 1

        await asyncio.gather(*(caller() for _ in range(32)))
        print(f"3-step serial pipeline: {done / 5:.0f} runs/s")
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
