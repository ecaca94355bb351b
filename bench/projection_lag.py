"""Projection lag at 1,000 events/s (target p99 <= 100 ms).

Only Kafka, Postgres and the projector run. The benchmark produces job events straight to
skyjobs.job-events (encoded with events.codec, keyed by job id, acks=all like the services) at a
fixed rate: every job gets job.submitted, then job.started 5 jobs later and job.succeeded 10 jobs
later, so the three events of a job are ~15 and ~30 ms apart and interleave with other jobs'.
Each event's clock starts when it is handed to the producer (its occurred_at). A LISTEN on the
projector's NOTIFY channel (sent in the same transaction as the rows, so it arrives at commit) makes
the benchmark read projector_offsets at once; an event is visible when the committed next_offset of
its partition passes its offset, and lag = time of that read - occurred_at. The rows are checked at
the end (every job row present, succeeded).
"""

from __future__ import annotations

import asyncio
import bisect
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from bench.common import (
    CpuMeter,
    conditions,
    cpu_per_unit,
    env_arg,
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
from events.jobs import JobStarted, JobSubmitted, JobSucceeded
from events.topics import JOB_EVENTS
from projections.runner import NOTIFY_CHANNEL

NAME = "projection_lag"
TARGET_P99 = 100.0
SPACING = 5  # jobs between a job's consecutive events


def _event(kind: int, job_id: str, now: datetime) -> Any:
    meta = {"event_id": new_id(), "stream_id": job_id, "sequence": kind + 1, "occurred_at": now,
            "correlation_id": job_id, "actor": "bench"}
    if kind == 0:
        return JobSubmitted(**meta, user_id="bench", command="true", submitted_at=now,
                            request_hash="0" * 64)
    if kind == 1:
        return JobStarted(**meta, executor_id="bench-executor", attempt=1)
    return JobSucceeded(**meta, exit_code=0, answer_id=new_id(), stderr_id=new_id())


class OffsetWatch:
    """History of the projector's committed offsets for the job events, read at each NOTIFY."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.history: dict[int, tuple[list[int], list[float]]] = {}  # partition -> (next_offsets, times)
        self.notifies = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.listen = await asyncpg.connect(self.dsn)
        self.query = await asyncpg.connect(self.dsn)
        await self.listen.add_listener(NOTIFY_CHANNEL, self._on_notify)
        self._task = asyncio.ensure_future(self._loop())

    def _on_notify(self, *_: object) -> None:
        self.notifies += 1
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), 0.05)  # a NOTIFY, or a fallback read
            except TimeoutError:
                pass
            self._wake.clear()
            rows = await self.query.fetch(
                "SELECT partition, next_offset FROM projector_offsets WHERE topic = $1", JOB_EVENTS)
            now = time.perf_counter()
            for r in rows:
                offsets, times = self.history.setdefault(r["partition"], ([], []))
                if not offsets or r["next_offset"] > offsets[-1]:
                    offsets.append(r["next_offset"])
                    times.append(now)

    def visible_at(self, partition: int, offset: int) -> float | None:
        offsets, times = self.history.get(partition, ([], []))
        i = bisect.bisect_right(offsets, offset)  # first committed next_offset > offset
        return times[i] if i < len(offsets) else None

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        await self.listen.close()
        await self.query.close()


async def produce(producer: AIOKafkaProducer, rate: float, duration: float, first_job: int,
                  job_ids: list[str]) -> tuple[list[tuple[float, Any]], int]:
    """Events at `rate`/s for `duration` s; returns [(produce perf time, send future)] and late ticks."""
    total = int(rate * duration)
    sent: list[tuple[float, Any]] = []
    late = 0
    t0 = time.perf_counter() + 0.01
    slot = 0
    while slot < total:
        due = t0 + slot / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            late += 1
        # every slot whose time has come (the loop may wake late: catch up in one go)
        upto = min(total, int((time.perf_counter() - t0) * rate) + 1)
        while slot < upto:
            kind = slot % 3
            job = first_job + slot // 3 - SPACING * kind
            slot += 1
            if job < first_job:  # the first few jobs have no started/succeeded due yet
                continue
            while len(job_ids) <= job:
                job_ids.append(str(uuid.UUID(new_id())))
            now = datetime.now(UTC)
            t = time.perf_counter()
            future = await producer.send(JOB_EVENTS, encode(_event(kind, job_ids[job], now)),
                                         key=job_ids[job].encode())
            sent.append((t, future))
    return sent, late


async def main_async(args: Any) -> dict[str, Any]:
    duration = args.duration or (15 if args.quick else 60)
    warmup = 3 if args.quick else 5
    cond = conditions()
    async with BenchStack(pg_fast=args.pg_fast, keep=args.keep, env=env_arg(args)) as stack:
        await stack.start("projector")
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap, acks="all", enable_idempotence=True,
                                    linger_ms=1)
        await producer.start()
        watch = OffsetWatch(stack.postgres.dsn)
        await watch.start()
        job_ids: list[str] = []
        try:
            say(f"warm-up: {warmup} s at {args.rate:.0f} events/s")
            warm, _ = await produce(producer, args.rate, warmup, 0, job_ids)
            await asyncio.gather(*(f for _, f in warm))
            await asyncio.sleep(1)
            say(f"measuring: {duration:.0f} s at {args.rate:.0f} events/s")
            notifies = watch.notifies
            with CpuMeter(stack.pids()) as cpu:
                sent, late = await produce(producer, args.rate, duration, len(job_ids) + SPACING * 2, job_ids)
                metas = await asyncio.gather(*(f for _, f in sent))
                await asyncio.sleep(0.5)
            acked = time.perf_counter()
            commits = watch.notifies - notifies
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if all(watch.visible_at(m.partition, m.offset) is not None for m in metas[-50:]):
                    break
                await asyncio.sleep(0.1)
            lags, missing = [], 0
            for (t, _), meta in zip(sent, metas, strict=True):
                seen = watch.visible_at(meta.partition, meta.offset)
                if seen is None:
                    missing += 1
                else:
                    lags.append(seen - t)
            conn = await stack.db()
            try:
                rows = await conn.fetchrow("SELECT count(*) AS n, count(*) FILTER (WHERE state = 'succeeded') AS ok "
                                           "FROM jobs")
            finally:
                await conn.close()
        finally:
            await watch.stop()
            await producer.stop()
    span = acked - sent[0][0] if sent else 0.0
    lag = summary_ms(lags)
    res = {
        "name": NAME, "conditions": cond, "pg_fast": args.pg_fast, "rate": args.rate, "duration_s": duration,
        "events": len(sent), "achieved_events_per_s": round(len(sent) / span, 1) if span else 0,
        "late_producer_ticks": late, "not_visible": missing, "projector_commits": commits,
        "events_per_commit": round(len(sent) / max(commits, 1), 1),
        "lag_ms": lag, "job_rows_incl_warmup": dict(rows), "cpu": cpu.result,
        "cpu_us_per_event": cpu_per_unit(cpu.result, len(sent), 1e6),
        "target_p99_ms": TARGET_P99, "verdict": verdict(lag.get("p99", 1e9), TARGET_P99, False),
    }
    say(f"{res['events']} events at {res['achieved_events_per_s']:.0f}/s; {commits} projector commits "
        f"({res['events_per_commit']} events each); not visible: {missing}")
    say(f"lag produce -> committed: {fmt_ms(lag)}")
    say(f"jobs rows (warm-up included) {rows['n']}, succeeded {rows['ok']}")
    say(fmt_cpu(cpu.result))
    say(f"CPU per event (us): {res['cpu_us_per_event']}")
    say(f"\ntarget p99 <= {TARGET_P99:.0f} ms: {res['verdict']}")
    return res


def main() -> None:
    p = parser(NAME, __doc__)
    p.add_argument("--rate", type=float, default=1000, help="events per second")
    p.add_argument("--duration", type=float, default=0, help="seconds of measured load (default 60, --quick 15)")
    args = p.parse_args()
    save(NAME, run(main_async(args)), args)


if __name__ == "__main__":
    exit_on_interrupt(main)
