"""GET /metrics (Prometheus' scrape) with 1,000,000 jobs in the read models.

The jobs are bulk-loaded by COPY as in bench.job_info (projecting a million jobs through Kafka would
take most of an hour here), `job_counts` is set from them as migration 015 does for an existing
table, then only the API runs and is scraped sequentially. The scrape reads the counts the
projector keeps and the jobs finished in the last 5 minutes (an index), never a whole table.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import conditions, env_arg, exit_on_interrupt, parser, run, save, say, summary_ms
from bench.http import wait_until
from bench.job_info import bulk_load
from bench.stack import BenchStack

NAME = "metrics"


async def main_async(args: Any) -> dict[str, Any]:
    cond = conditions()
    stack = BenchStack(pg_fast=args.pg_fast, keep=args.keep, env=env_arg(args))
    async with stack:
        _, _, load = await bulk_load(stack, args.rows)
        conn = await stack.db()
        try:
            await conn.execute("UPDATE job_counts c SET n = (SELECT count(*) FROM jobs j "
                               "WHERE j.state = c.state AND NOT j.deleted)")
        finally:
            await conn.close()
        await stack.start("api")
        client = stack.client()
        raw = client.get("/metrics")

        async def healthy() -> bool:
            status, _ = await client.call(raw)
            return status == 200

        await wait_until(healthy, 60, what="the API answering /metrics")
        seconds = []
        for _ in range(args.scrapes):
            started = time.perf_counter()
            status, body = await client.call(raw)
            seconds.append(time.perf_counter() - started)
            assert status == 200, body[:300]
        client.close()
    scrape = summary_ms(seconds)
    say(f"{args.scrapes} scrapes of /metrics over {load['rows']} jobs: p50 {scrape['p50']:.1f} ms, "
        f"max {scrape['max']:.1f} ms")
    return {"name": NAME, "conditions": cond, "load": load, "scrapes": args.scrapes, "scrape_ms": scrape}


def main() -> None:
    p = parser(NAME, __doc__)
    p.add_argument("--rows", type=int, default=1_000_000, help="jobs to bulk-load")
    p.add_argument("--scrapes", type=int, default=20, help="sequential scrapes measured")
    args = p.parse_args()
    save(NAME, run(main_async(args)), args)


if __name__ == "__main__":
    exit_on_interrupt(main)
