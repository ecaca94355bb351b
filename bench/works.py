"""Works (seed 003): list and search latency with 1,000,000 works (target p99 <= 20 ms), and the
scheduler's firing precision with 10,000 active schedules (target p99 lateness <= 1 s).

1. List/search: 1,000,000 works are BULK-LOADED with COPY into the migrated `works` table (with
   its trigram indexes), then VACUUM ANALYZE; requests at a fixed rate (open loop): a user's works
   newest first (`GET /api/v1/works?user_id=..`), a page of all works by name, and a substring
   search of name/description (`GET /api/v1/works/search?q=..`) for words of varied selectivity.
2. Precision: 10,000 SHELL works are created through Kafka (work.create commands), each with a
   6-field cron firing once a minute at its own second (spread over the minute, as real schedules
   spread); for every task scheduled the lateness is `task.scheduled.occurred_at - due_at`, read
   from the work-events topic. Tasks run `true` as jobs, so the executors' load is in the figure.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

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
from bench.http import open_loop
from bench.stack import BenchStack
from events.base import new_id, utcnow
from events.codec import decode_event, encode
from events.topics import WORK_COMMANDS, WORK_EVENTS
from events.works import CreateWork, TaskScheduled, WorkSpec

NAME = "works"
TARGET_LIST_P99 = 20.0
TARGET_LATENESS_P99 = 1000.0
USERS = 16
WORDS = ["ingest", "nightly", "report", "billing", "etl", "cleanup", "sync", "export", "train", "score", "backup",
         "audit", "orders", "users", "events", "metrics", "invoices", "images", "search", "index"]
COLUMNS = ["work_id", "lambda_id", "user_id", "name", "description", "type", "category", "status", "work_directory",
           "main_class_name", "extra_params", "java_version", "run_frequency", "command", "overlap", "catchup", "ttl",
           "created_at", "updated_at", "next_due", "last_command_id", "version"]


def rows(start: int, count: int, now: datetime) -> list[tuple[Any, ...]]:
    rnd = random.Random(start)
    out = []
    for i in range(start, start + count):
        created = now - timedelta(seconds=rnd.uniform(0, 365 * 86400))
        name = f"{rnd.choice(WORDS)} {rnd.choice(WORDS)} {i}"
        description = f"{rnd.choice(WORDS)} job for {rnd.choice(WORDS)} and {rnd.choice(WORDS)}"
        out.append((uuid.uuid4().hex, None, f"user{rnd.randrange(USERS)}", name, description, "BATCH", "SHELL",
                    rnd.choice([0, 1, 1, 1, 2]), None, None, "[]", None, rnd.choice(["hourly", "daily", None]),
                    "true", "skip", "one", None, created, created, None, None, 1))
    return out


async def list_and_search(args: Any) -> dict[str, Any]:
    n = 100_000 if args.quick else 1_000_000
    users = tuple(f"user{i}" for i in range(USERS))
    async with BenchStack(pg_fast=args.pg_fast, keep=args.keep, users=users) as stack:
        conn = await stack.db()
        now = datetime.now(UTC)
        started = time.monotonic()
        for start in range(0, n, 50_000):
            await conn.copy_records_to_table("works", records=rows(start, min(50_000, n - start), now),
                                             columns=COLUMNS)
        await conn.execute("VACUUM ANALYZE works")
        say(f"bulk-loaded {n} works in {time.monotonic() - started:.0f} s")
        await conn.close()
        await stack.start("api")
        client = stack.client()
        rnd = random.Random(1)
        tokens = [stack.tokens[u] for u in users]
        kinds = {
            "list_user": lambda u: f"/api/v1/works?user_id=user{u}&limit=10",
            "list_by_name_page5": lambda u: f"/api/v1/works?user_id=user{u}&order=name&limit=10&offset=5",
            "search_word": lambda u: f"/api/v1/works/search?q={rnd.choice(WORDS)}&limit=10",
            "search_rare": lambda u: f"/api/v1/works/search?name={rnd.randrange(n)}&limit=10",
        }
        result: dict[str, Any] = {"works": n}
        for kind, path in kinds.items():
            def make(i: int, path: Any = path) -> bytes:
                u = rnd.randrange(USERS)
                return client.get(path(u), tokens[u])

            await open_loop(client, make, 100, 3, 200)  # warm-up
            with CpuMeter(stack.pids()) as cpu:
                res = await open_loop(client, make, args.rate, 10 if args.quick else 30, 200)
            lat = summary_ms(res.latencies)
            result[kind] = {"latency_ms": lat, "ok": res.ok, "statuses": res.statuses, "cpu": cpu.result,
                            "verdict": verdict(lat.get("p99", 1e9), TARGET_LIST_P99, False)}
            say(f"{kind:>20} at {args.rate}/s: {fmt_ms(lat)} ({result[kind]['verdict']}; other statuses {res.statuses})")
        client.close()
    return result


async def precision(args: Any) -> dict[str, Any]:
    schedules = 2_000 if args.quick else 10_000
    minutes = 1 if args.quick else 2
    async with BenchStack(pg_fast=args.pg_fast, keep=args.keep) as stack:
        await stack.start("projector", f"worker:{args.workers}", "executor")
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap, linger_ms=10)
        await producer.start()
        work_ids = []
        for i in range(schedules):
            work_id = uuid.uuid4().hex
            second = i % 60
            spec = WorkSpec(user_id="bench", name=f"w{i}", description="precision", type="BATCH", category="SHELL",
                            command="true", run_frequency=f"* * * * * {second}", overlap="allow")
            await producer.send(WORK_COMMANDS, encode(CreateWork(command_id=new_id(), stream_id=work_id,
                                                                 issued_at=utcnow(), spec=spec)),
                                key=work_id.encode())
            work_ids.append(work_id)
        await producer.flush()
        await producer.stop()
        say(f"{schedules} works created; measuring {minutes} minute(s) of firing")
        consumer = AIOKafkaConsumer(WORK_EVENTS, bootstrap_servers=stack.kafka.bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        await consumer.start()
        lateness: list[float] = []
        deadline = time.monotonic() + 75 + 60 * minutes
        warm_until = utcnow() + timedelta(seconds=60)  # the first minute warms the worker's tables up
        with CpuMeter(stack.pids()) as cpu:
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        event = decode_event(record.value)
                        if isinstance(event, TaskScheduled) and event.due_at and event.due_at > warm_until:
                            lateness.append((event.occurred_at - event.due_at).total_seconds())
        await consumer.stop()
    lat = summary_ms(lateness)
    out = {"schedules": schedules, "minutes": minutes, "lateness_ms": lat, "cpu": cpu.result,
           "verdict": verdict(lat.get("p99", 1e9), TARGET_LATENESS_P99, False)}
    say(f"lateness of {len(lateness)} tasks: {fmt_ms(lat)} (target p99 <= 1 s: {out['verdict']})")
    say(fmt_cpu(cpu.result))
    return out


async def main_async(args: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": NAME, "conditions": conditions()}
    if args.part in ("all", "list"):
        out["list_and_search"] = await list_and_search(args)
    if args.part in ("all", "precision"):
        out["precision"] = await precision(args)
    return out


def main() -> None:
    p = parser(NAME, __doc__)
    p.add_argument("--part", choices=["all", "list", "precision"], default="all")
    p.add_argument("--rate", type=float, default=200, help="list/search requests per second")
    p.add_argument("--workers", type=int, default=1, help="precision: worker processes (they split the works)")
    args = p.parse_args()
    save(NAME, run(main_async(args)), args)


if __name__ == "__main__":
    exit_on_interrupt(main)
