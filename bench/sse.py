"""SSE fan-out: 200 subscribers of GET /api/stream, 1,000 events/s written (target p99 <= 200 ms).

Events are produced straight to skyjobs.job-events at a fixed rate (open loop), each carrying its
write time in occurred_at; every subscriber reads its stream and records, for each event, the delay
from that time to the moment the bytes holding it arrived. The subscribers run in child processes
of their own (raw HTTP/1.1 on uvloop, no SSE library: the client must not be what is measured), so
the latency includes their queueing too; their CPU is counted.

    --subscribers N      (default 200; --quick: 50)
    --api-procs N        serve the streams from N API processes, subscribers spread over them
    --client-procs N     subscriber processes (default 1)
    --distinct-filters   every subscriber with a filter of its own (the fan-out cannot share work)
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import resource
import time
from array import array
from datetime import UTC, datetime
from typing import Any

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
TYPE = "job.heartbeat-recorded.v1"
_OCCURRED = re.compile(rb'"occurred_at":"([^"]+)"')


def subscribers(urls: list[str], token: str, first: int, count: int, distinct: bool, out: Any, ready: Any,
                stop: Any) -> None:
    """A child process: `count` SSE clients; puts (delays in s, events, own CPU s) on `out` when `stop` is set."""
    import uvloop

    written_at: dict[bytes, float] = {}  # occurred_at text -> its time; shared by all the clients here
    delays = array("d")

    class Stream(asyncio.Protocol):
        def __init__(self, opened: asyncio.Future[None]) -> None:
            self.opened = opened
            self.buffer = b""
            self.header = True

        def data_received(self, data: bytes) -> None:
            now = time.time()
            buffer = self.buffer + data
            if self.header:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    self.buffer = buffer
                    return
                if not buffer.startswith(b"HTTP/1.1 200"):
                    self.opened.set_exception(RuntimeError(buffer[:200].decode(errors="replace")))
                    return
                self.header = False
                self.opened.set_result(None)
                buffer = buffer[end + 4:]
            cut = buffer.rfind(b"\r\n\r\n")  # complete events only
            if cut < 0:
                self.buffer = buffer
                return
            complete, self.buffer = buffer[:cut], buffer[cut + 4:]
            for stamp in _OCCURRED.findall(complete):
                at = written_at.get(stamp)
                if at is None:
                    at = written_at[stamp] = datetime.fromisoformat(stamp.decode()).timestamp()
                delays.append(now - at)

    async def one(i: int) -> asyncio.Transport:
        url = urls[i % len(urls)]
        host, port = url.removeprefix("http://").split(":")
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        transport, _ = await loop.create_connection(lambda: Stream(opened), host, int(port))
        types = TYPE + (f",bench.filter-{i}" if distinct else "")  # a filter of its own that still wants all
        transport.write(f"GET /api/stream?named=0&type={types} HTTP/1.1\r\nHost: {host}\r\n"
                        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode())
        await asyncio.wait_for(opened, 120)
        return transport  # type: ignore[return-value]

    async def main() -> None:
        transports = await asyncio.gather(*(one(first + i) for i in range(count)))
        ready.set()
        while not stop.is_set():  # noqa: ASYNC110 - a multiprocessing event
            await asyncio.sleep(0.1)
            if len(written_at) > 100_000:
                written_at.clear()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        for transport in transports:
            transport.close()
        out.put((delays.tobytes(), len(delays), usage.ru_utime + usage.ru_stime))

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
    count = args.subscribers or (50 if args.quick else 200)
    rate, seconds = args.rate, (10 if args.quick else 30)
    result: dict[str, Any] = {"name": NAME, "conditions": conditions(), "subscribers": count, "rate": rate,
                              "seconds": seconds, "api_procs": args.api_procs, "client_procs": args.client_procs,
                              "distinct_filters": args.distinct_filters}
    async with BenchStack(pg_fast=args.pg_fast, keep=args.keep, api_procs=args.api_procs) as stack:
        stack.env["SKYJOBS_TOKENS"] = f"{stack.token}=bench:admin"  # an admin sees every stream
        await stack.start("api")
        ctx = multiprocessing.get_context("spawn")
        out, stop = ctx.Queue(), ctx.Event()
        children, readies = [], []
        share = -(-count // args.client_procs)
        for first in range(0, count, share):
            ready = ctx.Event()
            child = ctx.Process(target=subscribers, args=(stack.urls, stack.token, first, min(share, count - first),
                                                          args.distinct_filters, out, ready, stop))
            child.start()
            children.append(child)
            readies.append(ready)
        for ready in readies:
            if not await asyncio.to_thread(ready.wait, 120):
                raise RuntimeError("the subscribers did not connect")
        say(f"{count} subscribers connected to {len(stack.urls)} API process(es)")
        pids = {**stack.pids(), **{f"subscribers{i + 1}": c.pid or 0 for i, c in enumerate(children)}}
        with CpuMeter(pids) as cpu:
            result["written"] = await produce(stack.kafka.bootstrap, rate, seconds)
            await asyncio.sleep(2)  # the last events on their way
        stop.set()
        parts = [await asyncio.to_thread(out.get, True, 120) for _ in children]
        for child in children:
            child.join(10)
        result["cpu"] = cpu.result
    delays = array("d")
    for raw, _, _ in parts:
        delays.frombytes(raw)
    result["client_cpu_s"] = round(sum(p[2] for p in parts), 2)
    result["received"] = len(delays)
    result["expected"] = result["written"] * count
    result["delay_ms"] = summary_ms(delays)
    p99 = result["delay_ms"].get("p99", float("inf"))
    say(f"{count} subscribers x {rate} events/s for {seconds} s ({args.api_procs} API process(es)"
        f"{', distinct filters' if args.distinct_filters else ''}): received {len(delays)} of {result['expected']}; "
        f"delay {fmt_ms(result['delay_ms'])} (target p99 <= {TARGET_P99:.0f} ms: {verdict(p99, TARGET_P99, False)})")
    say(fmt_cpu(result["cpu"]))
    return result


def cli() -> None:
    p = parser(NAME, __doc__)
    p.add_argument("--subscribers", type=int, default=0)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--api-procs", type=int, default=1)
    p.add_argument("--client-procs", type=int, default=1)
    p.add_argument("--distinct-filters", action="store_true")
    args = p.parse_args()
    save(NAME, run(main(args)), args)


if __name__ == "__main__":
    exit_on_interrupt(cli)
