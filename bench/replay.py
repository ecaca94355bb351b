"""Replay speed: events per second rebuilt by `skyjobs replay --all` (target >= 20,000/s on 2 cores).

The log is filled directly with job and file events (submitted, started, succeeded and the
output's file.stored: four events per job, as the executor path writes them) by a fast producer,
the live projector folds them, and then the replay rebuilds every projection from offset 0 into
fresh tables and swaps them in. Figures: the rebuild's events per second (whole log / replay time).
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaProducer

from bench.common import CpuMeter, conditions, exit_on_interrupt, fmt_cpu, parser, run, save, say, verdict
from bench.stack import BenchStack
from events.base import new_id, utcnow
from events.codec import encode
from events.files import FileStored
from events.jobs import JobStarted, JobSubmitted, JobSucceeded
from events.topics import FILE_EVENTS, JOB_EVENTS
from projections.replay import NAMES, replay

NAME = "replay"
TARGET = 20_000


def job_events(i: int) -> list[tuple[str, str, bytes]]:
    job_id, out = new_id(), new_id()
    t0 = utcnow()
    common = {"stream_id": job_id, "correlation_id": job_id, "actor": f"user{i % 16}"}
    return [
        (JOB_EVENTS, job_id, encode(JobSubmitted(event_id=new_id(), sequence=1, occurred_at=t0, **common,
                                                 user_id=f"user{i % 16}", command="true", submitted_at=t0))),
        (JOB_EVENTS, job_id, encode(JobStarted(event_id=new_id(), sequence=2, occurred_at=t0 + timedelta(milliseconds=5),
                                               **common, executor_id="bench", attempt=1))),
        (FILE_EVENTS, out, encode(FileStored(event_id=new_id(), stream_id=out, sequence=1, occurred_at=t0,
                                             correlation_id=job_id, owner_id=f"user{i % 16}", name=f"{job_id}.stdout",
                                             size=0, sha256="e3b0", content_type="text/plain", job_id=job_id))),
        (JOB_EVENTS, job_id, encode(JobSucceeded(event_id=new_id(), sequence=3,
                                                 occurred_at=t0 + timedelta(milliseconds=9), **common, exit_code=0,
                                                 answer_id=out))),
    ]


async def fill(bootstrap: str, jobs: int) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024,
                                compression_type=None, acks=1)
    await producer.start()
    sent = 0
    try:
        futures = []
        for i in range(jobs):
            for topic, key, value in job_events(i):
                futures.append(await producer.send(topic, value, key=key.encode()))
                sent += 1
            if len(futures) > 20_000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


async def main(args: Any) -> dict[str, Any]:
    jobs = 15_000 if args.quick else 60_000
    result: dict[str, Any] = {"name": NAME, "conditions": conditions(), "jobs": jobs}
    async with BenchStack(pg_fast=args.pg_fast, keep=args.keep) as stack:
        started = time.monotonic()
        result["events_written"] = await fill(stack.kafka.bootstrap, jobs)
        say(f"wrote {result['events_written']} events in {time.monotonic() - started:.1f} s")
        await stack.start("projector")
        conn = await stack.db()
        started = time.monotonic()
        while await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'succeeded'") < jobs:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        live = time.monotonic() - started
        result["live_projection_events_per_second"] = round(result["events_written"] / live)
        say(f"live projector: {result['live_projection_events_per_second']} events/s")
        await conn.close()
        with CpuMeter(stack.pids()) as cpu:
            outcome = await replay(stack.kafka.bootstrap, stack.postgres.dsn, NAMES)
        result["replay"] = outcome
        result["cpu"] = cpu.stop()
    rate = outcome["events"] / outcome["seconds"]
    result["events_per_second"] = round(rate)
    say(f"replay --all: {outcome['events']} events in {outcome['seconds']:.1f} s = {rate:,.0f} events/s "
        f"(target >= {TARGET:,}: {verdict(rate, TARGET, True)})")
    say(fmt_cpu(result["cpu"]))
    return result


def cli() -> None:
    args = parser(NAME, __doc__).parse_args()
    save(NAME, run(main(args)), args)


if __name__ == "__main__":
    exit_on_interrupt(cli)
