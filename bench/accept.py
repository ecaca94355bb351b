"""Accepted runs per second: POST /api/job/run {"command": "true"} -> 201 (target >= 3,000/s).

Closed loop at a few concurrency levels (each connection sends its next run as soon as the previous
one is answered: the saturation throughput and its latency), then an open loop at a fixed rate below
saturation (latency of an unsaturated API). Only the API, Kafka and Postgres run by default: the
accept path is API -> Kafka (acks=all) and nothing else; --full also runs the worker and projector,
which then compete for the same 2 cores executing what was accepted.
"""

from __future__ import annotations

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

NAME = "accept"
TARGET = 3000.0


async def measure(stack: BenchStack, concurrencies: list[int], duration: float, warmup: float,
                  rate: float, rate_duration: float) -> dict[str, Any]:
    client = stack.client()
    run = client.post_json("/api/job/run", {"command": "true"})
    say(f"warm-up: {warmup:.0f} s closed loop")
    await closed_loop(client, lambda: run, max(concurrencies), warmup, 201)
    rows = []
    for c in concurrencies:
        with CpuMeter(stack.pids()) as cpu:
            res = await closed_loop(client, lambda: run, c, duration, 201)
        lat = summary_ms(res.latencies)
        row = {"concurrency": c, "accepted_per_s": round(res.rate, 1), "latency_ms": lat,
               "other_statuses": res.statuses, "errors": res.errors, "cpu": cpu.result,
               "cpu_us_per_request": cpu_per_unit(cpu.result, res.ok, 1e6)}
        rows.append(row)
        say(f"closed loop, {c:4d} connections: {res.rate:8.1f} accepted/s; {fmt_ms(lat)}; "
            f"non-201 {res.statuses or 0}, errors {res.errors}")
        say(f"    {fmt_cpu(cpu.result)}")
        say(f"    CPU per accepted run (us): {row['cpu_us_per_request']}")
    open_row: dict[str, Any] = {}
    if rate > 0:
        with CpuMeter(stack.pids()) as cpu:
            res = await open_loop(client, lambda i: run, rate, rate_duration, 201)
        lat, service = summary_ms(res.latencies), summary_ms(res.service)
        open_row = {"rate": rate, "accepted_per_s": round(res.rate, 1), "latency_ms": lat,
                    "service_ms": service, "late_sends": res.late, "other_statuses": res.statuses,
                    "errors": res.errors, "cpu": cpu.result}
        say(f"open loop at {rate:.0f}/s: {res.rate:.1f} accepted/s; from schedule {fmt_ms(lat)}")
        say(f"    from send {fmt_ms(service)}; sends >1 ms late {res.late}")
        say(f"    {fmt_cpu(cpu.result)}")
    client.close()
    best = max(rows, key=lambda r: r["accepted_per_s"])
    return {"closed_loop": rows, "open_loop": open_row, "best": best}


async def main_async(args: Any) -> dict[str, Any]:
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    duration = args.duration or (5 if args.quick else 20)
    warmup = 2 if args.quick else 5
    cond = conditions()
    stack = BenchStack(pg_fast=args.pg_fast, keep=args.keep, env=env_arg(args), api_procs=args.api_procs)
    async with stack:
        await stack.start("api", *(("projector", "worker", "executor") if args.full else ()))
        if args.full:
            await stack.wait_worker_ready()
        say(f"API processes: {args.api_procs}; worker and projector running: {args.full}")
        result = await measure(stack, concurrencies, duration, warmup, args.rate, 5 if args.quick else 10)
    best = result["best"]
    result.update(name=NAME, conditions=cond, api_procs=args.api_procs, full_stack=args.full,
                  pg_fast=args.pg_fast, target_per_s=TARGET,
                  verdict=verdict(best["accepted_per_s"], TARGET, True))
    say(f"\nbest: {best['accepted_per_s']:.0f} accepted runs/s at {best['concurrency']} connections "
        f"(p50 {best['latency_ms']['p50']:.1f} ms, p99 {best['latency_ms']['p99']:.1f} ms); "
        f"target >= {TARGET:.0f}/s: {result['verdict']}")
    return result


def main() -> None:
    p = parser(NAME, __doc__)
    p.add_argument("--concurrency", default="16,64,256", help="closed-loop connection counts (comma separated)")
    p.add_argument("--duration", type=float, default=0, help="seconds per concurrency level")
    p.add_argument("--rate", type=float, default=1000, help="open-loop rate after the sweep (0: skip)")
    p.add_argument("--api-procs", type=int, default=1, help="API processes (the client spreads connections)")
    p.add_argument("--full", action="store_true", help="also run the worker and the projector")
    args = p.parse_args()
    result = run(main_async(args))
    save(NAME, result, args)


if __name__ == "__main__":
    exit_on_interrupt(main)
