"""Executed trivial jobs per second: a burst of N `true` jobs, completion read from the jobs table (target >= 500/s).

The burst is posted as fast as the API accepts it (64 connections); the benchmark then polls the
projection (`jobs` table) every 100 ms until every job of the burst is finished. Figures:
  end to end  N / (last job seen finished - first run sent), client clock, projection included;
  server      N / (max finished_at - min submitted_at), the jobs' own timestamps;
  steady      jobs per second between the 10th and the 90th percentile of finished_at.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench.common import (
    CpuMeter,
    conditions,
    cpu_per_unit,
    env_arg,
    exit_on_interrupt,
    fmt_cpu,
    fmt_ms,
    parser,
    pct,
    run,
    save,
    say,
    summary_ms,
    verdict,
)
from bench.stack import BenchStack, submit_burst

NAME = "throughput"
TARGET = 500.0
FINISHED = ("succeeded", "failed", "cancelled", "expired")


def rates(submitted: list[float], finished: list[float], started_client: float, seen_client: float,
          accepted_client: float) -> dict[str, float]:
    """Throughput figures from sorted server timestamps (epoch seconds) and client times."""
    n = len(finished)
    lo, hi = pct(finished, 0.10), pct(finished, 0.90)
    return {
        "jobs": n,
        "end_to_end_per_s": round(n / (seen_client - started_client), 1),
        "server_per_s": round(n / (finished[-1] - submitted[0]), 1),
        "steady_per_s": round(0.8 * n / (hi - lo), 1) if hi > lo else float("nan"),
        "submit_per_s": round(n / (accepted_client - started_client), 1),
        "burst_s": round(seen_client - started_client, 2),
    }


async def skyjobs_burst(stack: BenchStack, n: int, command: str = "true", timeout: float = 170) -> dict[str, Any]:
    client = stack.client()
    conn = await stack.db()
    try:
        since = datetime.now(UTC)
        started = time.time()
        submitting = asyncio.ensure_future(submit_burst(client, n, command))
        accepted_at = 0.0
        deadline = time.monotonic() + timeout
        progress = []
        done = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            if submitting.done() and not accepted_at:
                ids = submitting.result()
                accepted_at = time.time()
            done = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE submitted_at >= $1 AND state = ANY($2::text[])", since, FINISHED)
            progress.append((round(time.time() - started, 2), done))
            if accepted_at and done >= len(ids):
                break
        seen = time.time()
        if not accepted_at:
            raise TimeoutError("the burst was not even accepted in time")
        rows = await conn.fetch("SELECT state, submitted_at, started_at, finished_at FROM jobs "
                                "WHERE job_id = ANY($1::uuid[])", ids)
    finally:
        client.close()
        await conn.close()
    return _burst_result(rows, n, started, accepted_at, seen, progress)


def _burst_result(rows: list[asyncpg.Record], n: int, started: float, accepted_at: float, seen: float,
                  progress: list[tuple[float, int]]) -> dict[str, Any]:
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    fin = [r for r in rows if r["finished_at"] is not None]
    result: dict[str, Any] = {"submitted": n, "states": states, "finished": len(fin),
                              "progress_every_100ms": progress[::5]}
    if len(fin) < n:
        result["incomplete"] = True
    if fin:
        submitted = sorted(r["submitted_at"].timestamp() for r in fin)
        finished = sorted(r["finished_at"].timestamp() for r in fin)
        result |= rates(submitted, finished, started, seen, accepted_at)
        result["queue_ms"] = summary_ms((r["started_at"] - r["submitted_at"]).total_seconds()
                                        for r in fin if r["started_at"])
        result["run_ms"] = summary_ms((r["finished_at"] - r["started_at"]).total_seconds()
                                      for r in fin if r["started_at"])
    return result


def report(res: dict[str, Any], label: str = "skyjobs") -> None:
    say(f"{label}: {res['finished']}/{res['submitted']} finished, states {res['states']}"
        + ("  (INCOMPLETE: timed out)" if res.get("incomplete") else ""))
    if "end_to_end_per_s" in res:
        say(f"  end to end {res['end_to_end_per_s']:.0f} jobs/s ({res['burst_s']:.1f} s), server "
            f"{res['server_per_s']:.0f}/s, steady {res['steady_per_s']:.0f}/s; burst accepted at "
            f"{res['submit_per_s']:.0f}/s")
        if res.get("queue_ms"):
            say(f"  submitted -> started {fmt_ms(res['queue_ms'])}")
            say(f"  started -> finished  {fmt_ms(res['run_ms'])}")


async def main_async(args: Any) -> dict[str, Any]:
    n = args.jobs or (1000 if args.quick else 5000)
    cond = conditions()
    async with BenchStack(pg_fast=args.pg_fast, keep=args.keep, env=env_arg(args)) as stack:
        await stack.start("projector", "worker", "executor", "api")
        say(f"worker ready after {await stack.wait_worker_ready():.1f} s")
        say("warm-up: a burst of 3000 jobs (Kafka's JIT compiles during the first minute of traffic)")
        report(await skyjobs_burst(stack, 3000), "warm-up")
        say(f"measuring: a burst of {n} `true` jobs")
        with CpuMeter(stack.pids()) as cpu:
            res = await skyjobs_burst(stack, n)
    res["cpu_ms_per_job"] = cpu_per_unit(cpu.result, res["finished"])
    report(res)
    say(fmt_cpu(cpu.result))
    say(f"CPU per job (ms): {res['cpu_ms_per_job']}")
    res.update(name=NAME, conditions=cond, cpu=cpu.result, pg_fast=args.pg_fast, target_per_s=TARGET,
               verdict=verdict(res.get("steady_per_s", 0.0), TARGET, True))
    say(f"\ntarget >= {TARGET:.0f} jobs/s (steady): {res['verdict']}")
    return res


def main() -> None:
    p = parser(NAME, __doc__)
    p.add_argument("--jobs", type=int, default=0, help="burst size (default 5000, --quick 1000)")
    args = p.parse_args()
    save(NAME, run(main_async(args)), args)


if __name__ == "__main__":
    exit_on_interrupt(main)
