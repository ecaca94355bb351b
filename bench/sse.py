"""SSE fan-out: 200 subscribers of GET /api/stream, 1,000 events/s written (target p99 <= 200 ms).

Events are produced straight to skyjobs.job-events at a fixed rate (open loop), each carrying its
write time in occurred_at; every subscriber parses each event it receives and records the delay
from that time. Subscribers run in a separate process from the producer so that the client's own
parsing does not delay the writes; latency therefore includes the client's queueing too.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from bench.common import (
    CpuMeter,
    conditions,
    exit_on_interrupt,
    fmt_cpu,
    fmt_ms,
    parser,
    run,
    save,
    say,
    summary_ms,
    verdict,
)
from bench.stack import BenchStack
from events.base import new_id
from events.codec import encode
from events.jobs import JobHeartbeat
from events.topics import JOB_EVENTS

NAME = "sse"
TARGET_P99 = 200.0


def subscribers(url: str, token: str, count: int, seconds: float, out: Any, ready: Any) -> None:
    """A child process: `count` SSE clients; puts every delay (s) on `out` at the end."""

    async def one(client: httpx.AsyncClient, delays: list[float], opened: asyncio.Event, counter: list[int]) -> None:
        async with client.stream("GET", f"{url}/api/stream", params={"named": "0", "type": "job.heartbeat-recorded.v1"},
                                 headers={"Authorization": f"Bearer {token}"}) as response:
            counter[0] += 1
            if counter[0] == count:
                opened.set()
            deadline = time.time() + seconds
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    written = datetime.fromisoformat(orjson.loads(line[6:])["occurred_at"]).timestamp()
                    delays.append(time.time() - written)
                if time.time() > deadline:
                    return

    async def main() -> None:
        delays: list[float] = []
        opened = asyncio.Event()
        counter = [0]
        limits = httpx.Limits(max_connections=count + 10)
        async with httpx.AsyncClient(timeout=None, limits=limits) as client:
            tasks = [asyncio.ensure_future(one(client, delays, opened, counter)) for _ in range(count)]
            await asyncio.wait_for(opened.wait(), 120)
            ready.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        out.put(delays)

    import uvloop

    uvloop.run(main())


async def produce(bootstrap: str, rate: int, seconds: float) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    await producer.start()
    sent = 0
    try:
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate)
            while sent < due:
                job_id = new_id()
                event = JobHeartbeat(event_id=new_id(), stream_id=job_id, sequence=2, occurred_at=datetime.now(UTC),
                                     correlation_id=job_id, executor_id="bench", attempt=1)
                await producer.send(JOB_EVENTS, encode(event), key=job_id.encode())
                sent += 1
            await asyncio.sleep(0.002)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def main(args: Any) -> dict[str, Any]:
    count = 50 if args.quick else 200
    rate, seconds = 1000, (10 if args.quick else 30)
    result: dict[str, Any] = {"name": NAME, "conditions": conditions(), "subscribers": count, "rate": rate,
                              "seconds": seconds}
    async with BenchStack(pg_fast=args.pg_fast, keep=args.keep) as stack:
        stack.env["SKYJOBS_TOKENS"] = f"{stack.token}=bench:admin"  # an admin sees every stream
        await stack.start("api")
        ctx = multiprocessing.get_context("spawn")
        out, ready = ctx.Queue(), ctx.Event()
        child = ctx.Process(target=subscribers, args=(stack.urls[0], stack.token, count, seconds + 3, out, ready))
        child.start()
        await asyncio.to_thread(ready.wait, 120)
        say(f"{count} subscribers connected")
        with CpuMeter({**stack.pids(), "subscribers": child.pid or 0}) as cpu:
            result["written"] = await produce(stack.kafka.bootstrap, rate, seconds)
            delays = await asyncio.to_thread(out.get, True, seconds + 120)
        child.join(10)
        result["cpu"] = cpu.stop()
    result["received"] = len(delays)
    result["expected"] = result["written"] * count
    result["delay_ms"] = summary_ms(delays)
    p99 = result["delay_ms"].get("p99", float("inf"))
    say(f"{count} subscribers x {rate} events/s for {seconds} s: received {len(delays)} of {result['expected']}; "
        f"delay {fmt_ms(result['delay_ms'])} (target p99 <= {TARGET_P99:.0f} ms: {verdict(p99, TARGET_P99, False)})")
    say(fmt_cpu(result["cpu"]))
    return result


def cli() -> None:
    args = parser(NAME, __doc__).parse_args()
    save(NAME, run(main(args)), args)


if __name__ == "__main__":
    exit_on_interrupt(cli)
