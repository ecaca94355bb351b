"""Submit -> succeeded visible in job_info for `true`, open loop at 100 jobs/s (target p50 <= 50 ms, p99 <= 250 ms).

Runs are sent at a fixed rate whatever the answers take. Each job's clock starts at its scheduled
send time; after the 201 the client polls GET /api/job/job_info/{id} every --poll-ms (the first call
blocks until the row is projected: read-your-writes; a job older than 10 poll intervals is polled every
tenth of its age, so that a backlog cannot drown the API in polls) and stops the clock at the first
answer saying `succeeded`. The client-seen figure is therefore late by up to one poll interval;
the server-side timestamps of the row (submitted_at, started_at, finished_at) break it down.

With `--wait S` each job makes one `job_info?wait=S` call instead (again if it answers unfinished):
the API answers once the job's end is projected, so the figure has no poll interval in it and the
API no polls to serve.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import orjson

from bench.common import (
    CpuMeter,
    conditions,
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
from bench.http import Client, open_loop
from bench.stack import BenchStack

NAME = "latency"
P50_TARGET, P99_TARGET = 50.0, 250.0
FINISHED = {"succeeded", "failed", "cancelled", "expired"}


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


async def skyjobs_latency(client: Client, rate: float, duration: float, poll: float,
                          command: str = "true", timeout: float = 30, max_polls: int = 64,
                          wait: float = 0) -> dict[str, Any]:
    """Open loop of runs at `rate`/s; per job: client-seen submit -> succeeded and the server's breakdown.

    At most `max_polls` job_info calls are in flight: if the system falls behind, thousands of waiting
    jobs polling every few ms would otherwise drown the API (the figures are then meaningless anyway:
    the result says `overloaded`). A job not finished `timeout` s after its run call is counted as such.
    With `wait`, each call waits up to `wait` s for the job's end (`job_info?wait=`), and a call is
    made for every job at once (one per job: no polling load to bound).
    """
    run_raw = client.post_json("/api/job/run", {"command": command})
    polling = asyncio.Semaphore(100_000 if wait else max_polls)
    wall_minus_perf = time.time() - time.perf_counter()
    jobs: list[dict[str, Any]] = []
    polls = 0
    watchers: list[asyncio.Task[None]] = []

    async def watch(scheduled: float, accepted: float, job_id: str) -> None:
        nonlocal polls
        raw = client.get(f"/api/job/job_info/{job_id}" + (f"?wait={wait:g}" if wait else ""))
        deadline = time.perf_counter() + timeout
        info: dict[str, Any] = {}
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            async with polling:
                status, body = await client.call(raw)
            polls += 1
            if status == 200:
                info = orjson.loads(body)
                if info["state"] in FINISHED:
                    break
            if wait and status == 200:
                continue  # the wait passed: ask again
            # every `poll` s while young, then every tenth of the job's age: 10% precision, bounded API load
            interval = max(poll, 0.1 * (time.perf_counter() - scheduled))
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - sent)))
        seen = time.perf_counter()
        jobs.append({"job_id": job_id, "state": info.get("state"), "scheduled": scheduled + wall_minus_perf,
                     "accepted": accepted + wall_minus_perf, "seen": seen + wall_minus_perf,
                     "submitted_at": _ts(info.get("submitted_at")), "started_at": _ts(info.get("started_at")),
                     "finished_at": _ts(info.get("finished_at"))})

    def on_accepted(i: int, body: bytes, scheduled: float, answered: float) -> None:
        job_id = orjson.loads(body)["job_id"]
        watchers.append(asyncio.ensure_future(watch(scheduled, answered, job_id)))

    load = await open_loop(client, lambda i: run_raw, rate, duration, 201, on_ok=on_accepted)
    await asyncio.gather(*watchers)
    ok = [j for j in jobs if j["state"] == "succeeded"]
    total = summary_ms(j["seen"] - j["scheduled"] for j in ok)
    unfinished = sum(1 for j in jobs if j["state"] not in FINISHED)
    server = [j for j in ok if j["finished_at"] and j["started_at"] and j["submitted_at"]]
    return {
        "rate": rate, "duration_s": duration, "poll_ms": 0 if wait else poll * 1000, "wait_s": wait,
        "submitted": len(load.latencies) + load.errors + sum(load.statuses.values()),
        "accepted": len(load.latencies), "run_errors": load.errors, "run_other_statuses": load.statuses,
        "states": {s: sum(1 for j in jobs if j["state"] == s) for s in {j["state"] for j in jobs}},
        "unfinished_after_timeout": unfinished,
        "overloaded": unfinished > 0 or total.get("p50", 0) > 1000 * timeout / 4,
        "job_info_polls": polls, "polls_per_job": round(polls / max(len(jobs), 1), 2),
        "submit_to_succeeded_seen_ms": total,
        "run_call_ms": summary_ms(load.latencies),
        "breakdown_ms": {
            "scheduled -> submitted_at (run call up to the API's clock)":
                summary_ms(j["submitted_at"] - j["scheduled"] for j in server),
            "submitted_at -> started_at (lifecycle, executor dispatch, StartJob)":
                summary_ms(j["started_at"] - j["submitted_at"] for j in server),
            "started_at -> finished_at (process + outputs + FinishJob)":
                summary_ms(j["finished_at"] - j["started_at"] for j in server),
            "finished_at -> seen succeeded (events, projection, poll)":
                summary_ms(j["seen"] - j["finished_at"] for j in server),
            "submitted_at -> finished_at (server side)":
                summary_ms(j["finished_at"] - j["submitted_at"] for j in server),
        },
    }


def report(res: dict[str, Any]) -> None:
    if res["overloaded"]:
        say(f"OVERLOADED: {res['unfinished_after_timeout']} jobs not finished in time; the system does not "
            f"sustain {res['rate']:.0f} jobs/s, so the latencies below are queueing time")
    how = f"?wait={res['wait_s']:g}" if res.get("wait_s") else f"every {res['poll_ms']:.0f} ms"
    say(f"{res['accepted']} accepted of {res['submitted']} at {res['rate']:.0f}/s; states {res['states']}; "
        f"{res['polls_per_job']} job_info calls per job ({how})")
    say(f"submit -> succeeded seen: {fmt_ms(res['submit_to_succeeded_seen_ms'])}")
    say(f"run call:                 {fmt_ms(res['run_call_ms'])}")
    for what, s in res["breakdown_ms"].items():
        say(f"  {what}: {fmt_ms(s)}")


async def main_async(args: Any) -> dict[str, Any]:
    duration = args.duration or (15 if args.quick else 60)
    cond = conditions()
    async with BenchStack(pg_fast=args.pg_fast, keep=args.keep, env=env_arg(args)) as stack:
        await stack.start("projector", "worker", "executor", "api")
        ready = await stack.wait_worker_ready()
        say(f"worker ready after {ready:.1f} s")
        client = stack.client()
        # Kafka's JIT compiles for most of the first minute of traffic (a third of the broker's CPU
        # in a 60 s run): warm it up at the measured rate first.
        warm = min(args.rate, 50.0)
        say(f"warm-up: {args.warmup:g} s at {warm:.0f} jobs/s")
        await skyjobs_latency(client, warm, args.warmup, args.poll_ms / 1000, wait=args.wait)
        say(f"measuring: {duration:.0f} s at {args.rate:.0f} jobs/s")
        with CpuMeter(stack.pids()) as cpu:
            res = await skyjobs_latency(client, args.rate, duration, args.poll_ms / 1000, wait=args.wait)
        client.close()
    report(res)
    say(fmt_cpu(cpu.result))
    lat = res["submit_to_succeeded_seen_ms"]
    res.update(name=NAME, conditions=cond, cpu=cpu.result, pg_fast=args.pg_fast,
               targets_ms={"p50": P50_TARGET, "p99": P99_TARGET},
               verdict={"p50": verdict(lat.get("p50", 1e9), P50_TARGET, False),
                        "p99": verdict(lat.get("p99", 1e9), P99_TARGET, False)})
    say(f"\ntarget p50 <= {P50_TARGET:.0f} ms: {res['verdict']['p50']}; "
        f"p99 <= {P99_TARGET:.0f} ms: {res['verdict']['p99']}")
    return res


def main() -> None:
    p = parser(NAME, __doc__)
    p.add_argument("--rate", type=float, default=100, help="jobs per second")
    p.add_argument("--duration", type=float, default=0, help="seconds of measured load")
    p.add_argument("--warmup", type=float, default=30, help="seconds of warm-up load before measuring")
    p.add_argument("--poll-ms", type=float, default=10, help="job_info poll interval per job")
    p.add_argument("--wait", type=float, default=0,
                   help="one job_info?wait=S call per job instead of polling (S seconds; 0: poll)")
    args = p.parse_args()
    save(NAME, run(main_async(args)), args)


if __name__ == "__main__":
    exit_on_interrupt(main)
