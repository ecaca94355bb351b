"""GET /api/job/job_info/{id} at 1,000 requests/s with 1,000,000 jobs projected (target p99 <= 10 ms).

Projecting a million jobs through Kafka would take most of an hour on 2 cores, so the rows are
BULK-LOADED: generated in Python (UUIDv7 ids over the last 30 days, 16 users, a realistic mix of
states and timestamps, output file ids) and written with COPY (asyncpg copy_records_to_table) into
the migrated `jobs` table with all its indexes, then VACUUM ANALYZE (what autovacuum would reach).
Only the API runs (plus Kafka and Postgres). Requests go at a fixed rate (open loop) for uniformly
random ids, each with its owner's token; latency counts from the scheduled send time.
A short closed-loop run afterwards gives the API's maximum job_info rate for reference.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

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
from bench.http import closed_loop, open_loop
from bench.stack import BenchStack

NAME = "job_info"
TARGET_P99 = 10.0
USERS = 16
STATES = [("succeeded", 90), ("failed", 5), ("cancelled", 2), ("expired", 2), ("queued", 0.5), ("running", 0.5)]
SPAN_S = 30 * 86400
COMMANDS = ["true", "uname -a | wc -l", "python3 train.py --epochs 3 > model.txt", "sleep 1; echo done",
            "cat input.csv | sort | uniq -c > counts.txt"]


def _uuid7(ms: int, rnd: random.Random) -> uuid.UUID:
    return uuid.UUID(int=(ms << 80) | (0x7 << 76) | (rnd.getrandbits(12) << 64) | (0b10 << 62) | rnd.getrandbits(62))


def generate(start: int, count: int, total: int, now: datetime) -> tuple[list[tuple[Any, ...]], list[str], list[int]]:
    """Rows start..start+count of `total` in COPY column order, their ids and their owners' indexes.

    Jobs arrive evenly over the last 30 days (row order = time order, as a live system inserts them).
    """
    seed = start
    rnd = random.Random(seed)
    states = [s for s, _ in STATES]
    weights = [w for _, w in STATES]
    picked = rnd.choices(states, weights, k=count)
    rows, ids, owners = [], [], []
    for i in range(count):
        submitted = now - timedelta(seconds=SPAN_S * (1 - (start + i) / total) + 60)
        job_id = _uuid7(int(submitted.timestamp() * 1000), rnd)
        owner = rnd.randrange(USERS)
        state = picked[i]
        started = finished = None
        exit_code = answer = stderr = error = executor = None
        version = 2
        if state != "queued":
            started = submitted + timedelta(milliseconds=rnd.uniform(5, 200))
            executor = f"worker-{rnd.randrange(4)}"
            version = 3
        if state in ("succeeded", "failed", "cancelled", "expired"):
            finished = started + timedelta(milliseconds=rnd.expovariate(1 / 2000)) if started else submitted
            answer, stderr = uuid.uuid4(), uuid.uuid4()
            exit_code = 0 if state == "succeeded" else 1
            error = None if state == "succeeded" else f"{state}: exited with code 1"
            version = 4
        command = COMMANDS[rnd.randrange(len(COMMANDS))]
        rows.append((job_id, f"user{owner}", state, command, None, "[]", None, None, submitted, started, finished,
                     exit_code, answer, stderr, error, 1, executor, None, f"{start + i:064x}", False, version,
                     str(job_id)))
        ids.append(str(job_id))
        owners.append(owner)
    return rows, ids, owners


COPY_COLUMNS = ["job_id", "user_id", "state", "command", "binary_file", "input_files", "ttl", "deadline",
                "submitted_at", "started_at", "finished_at", "exit_code", "answer_id", "stderr_id", "error",
                "attempt", "executor_id", "lease_until", "request_hash", "deleted", "version", "correlation_id"]


async def bulk_load(stack: BenchStack, n: int, chunk: int = 50_000) -> tuple[list[str], list[int], dict[str, Any]]:
    """Generate chunks in a helper process while the previous chunk is COPYed (2 cores: both busy)."""
    conn = await stack.db()
    now = datetime.now(UTC)
    ids: list[str] = []
    owners: list[int] = []
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    try:
        with ProcessPoolExecutor(1) as pool:
            starts = list(range(0, n, chunk))
            pending = loop.run_in_executor(pool, generate, 0, min(chunk, n), n, now)
            for k in range(len(starts)):
                rows, chunk_ids, chunk_owners = await pending
                if k + 1 < len(starts):
                    nxt = starts[k + 1]
                    pending = loop.run_in_executor(pool, generate, nxt, min(chunk, n - nxt), n, now)
                await conn.copy_records_to_table("jobs", records=rows, columns=COPY_COLUMNS)
                ids += chunk_ids
                owners += chunk_owners
        copied = time.monotonic()
        await conn.execute("VACUUM ANALYZE jobs")
        vacuumed = time.monotonic()
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('jobs'))")
        count = await conn.fetchval("SELECT count(*) FROM jobs")
    finally:
        await conn.close()
    info = {"rows": count, "total_relation_size": size, "generate_and_copy_s": round(copied - started, 1),
            "vacuum_analyze_s": round(vacuumed - copied, 1)}
    say(f"bulk-loaded {count} rows ({size} with indexes): generate + COPY {info['generate_and_copy_s']} s, "
        f"VACUUM ANALYZE {info['vacuum_analyze_s']} s")
    return ids, owners, info


async def main_async(args: Any) -> dict[str, Any]:
    n = args.rows
    duration = args.duration or (15 if args.quick else 60)
    cond = conditions()
    users = tuple(f"user{i}" for i in range(USERS))
    stack = BenchStack(pg_fast=args.pg_fast, keep=args.keep, env=env_arg(args), users=users,
                       shared_buffers=args.shared_buffers)
    async with stack:
        ids, owners, load = await bulk_load(stack, n)
        tokens = [stack.tokens[name] for name in users]
        await stack.start("api")
        client = stack.client()
        rnd = random.Random(42)

        def make(i: int) -> bytes:
            k = rnd.randrange(len(ids))
            return client.get(f"/api/job/job_info/{ids[k]}", tokens[owners[k]])

        say("warm-up: 5 s at the same rate")
        warm = await open_loop(client, make, args.rate, 5, 200)
        if warm.statuses or warm.errors:
            say(f"warm-up: other statuses {warm.statuses}, errors {warm.error_kinds}")
        say(f"measuring: {duration:.0f} s at {args.rate:.0f} requests/s over {len(ids)} random ids")
        with CpuMeter(stack.pids()) as cpu:
            res = await open_loop(client, make, args.rate, duration, 200)
        with CpuMeter(stack.pids()) as max_cpu:
            peak = await closed_loop(client, lambda: make(0), 32, 5 if args.quick else 10, 200)
        client.close()
    lat, service = summary_ms(res.latencies), summary_ms(res.service)
    out = {
        "name": NAME, "conditions": cond, "pg_fast": args.pg_fast, "load": load,
        "shared_buffers": args.shared_buffers or "256MB", "rate": args.rate,
        "duration_s": duration, "ok": res.ok, "achieved_per_s": round(res.rate, 1), "other_statuses": res.statuses,
        "errors": res.error_kinds, "late_sends": res.late, "latency_ms": lat, "service_ms": service, "cpu": cpu.result,
        "cpu_us_per_request": cpu_per_unit(cpu.result, res.ok, 1e6),
        "closed_loop_32": {"per_s": round(peak.rate, 1), "latency_ms": summary_ms(peak.latencies),
                           "other_statuses": peak.statuses, "cpu": max_cpu.result},
        "target_p99_ms": TARGET_P99, "verdict": verdict(lat.get("p99", 1e9), TARGET_P99, False),
    }
    say(f"{res.ok} answers at {res.rate:.0f}/s; other statuses {res.statuses or 0}, errors {res.error_kinds or 0}, "
        f"sends >1 ms late {res.late}")
    say(f"job_info from schedule: {fmt_ms(lat)}")
    say(f"job_info from send:     {fmt_ms(service)}")
    say(fmt_cpu(cpu.result))
    say(f"CPU per request (us): {out['cpu_us_per_request']}")
    say(f"closed loop, 32 connections: {peak.rate:.0f} job_info/s, {fmt_ms(out['closed_loop_32']['latency_ms'])}")
    say(f"\ntarget p99 <= {TARGET_P99:.0f} ms at {args.rate:.0f}/s: {out['verdict']}")
    return out


def main() -> None:
    p = parser(NAME, __doc__)
    p.add_argument("--shared-buffers", default=None,
                   help="Postgres shared_buffers (default: the repo's 256MB; e.g. 1GB holds the whole table)")
    p.add_argument("--rows", type=int, default=1_000_000, help="jobs to bulk-load")
    p.add_argument("--rate", type=float, default=1000, help="requests per second")
    p.add_argument("--duration", type=float, default=0, help="seconds of measured load (default 60, --quick 15)")
    args = p.parse_args()
    save(NAME, run(main_async(args)), args)


if __name__ == "__main__":
    exit_on_interrupt(main)
