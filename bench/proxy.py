"""Worker services and the task proxy: add_task's overhead, tasks per second, and the balance.

    python -m bench.proxy [--quick] [--concurrency 16,64,128] [--duration 15] [--instances 2]

A fresh stack runs the API, the router and the projector (no job worker), and `--instances` copies of
the trivial echo service (workers/echo_service: answers its argument at once), registered through
POST /services. Three figures:

1. overhead of add_task over calling the instance directly: one connection, alternating blocks of
   100 calls of POST /run on an instance and POST /add_task through the proxy (same arguments);
   overhead = proxy percentile - direct percentile (targets: p50 <= 5 ms, p99 <= 25 ms);
2. tasks per second through the proxy, closed loop at a few connection counts (target >= 1,000/s);
3. the balance: each instance's share of the answers in those runs (target max/min <= 1.2).
Everything shares the machine's 2 cores, the load generator included (its CPU is reported).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

import orjson

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
from bench.http import Client, closed_loop, wait_until
from bench.stack import BenchStack
from infra.local import free_port

NAME = "proxy"
TARGET_P50_MS = 5.0
TARGET_P99_MS = 25.0
TARGET_PER_S = 1000.0
TARGET_BALANCE = 1.2
SERVICE = "bench_echo"


async def start_instances(stack: BenchStack, count: int) -> list[str]:
    urls = []
    for i in range(count):
        port = free_port()
        await stack.supervisor.start(f"echo{i + 1}", [sys.executable, "-m", "workers.echo_service", "--port", str(port),
                                                      "--name", SERVICE, "--label", f"echo{i + 1}"], restart=False)
        url = f"http://127.0.0.1:{port}"
        client = Client([url], "-")

        async def answers(client: Client = client) -> bool:
            try:
                return (await client.call(client.get("/me")))[0] == 200
            except OSError:
                return False

        await wait_until(answers, timeout=60, interval=0.1, what=f"echo instance on {port}")
        client.close()
        urls.append(url)
    return urls


async def register(client: Client, urls: list[str]) -> int:
    service_ids = set()
    for url in urls:
        status, body = await client.call(client.post_json("/services", {"url": url}))
        if status not in (200, 201):
            raise RuntimeError(f"POST /services answered {status}: {body[:300]!r}")
        service_ids.add(orjson.loads(body)["service_id"])
    (service_id,) = service_ids
    return int(service_id)


async def overhead(stack: BenchStack, direct_url: str, service_id: int, blocks: int) -> dict[str, Any]:
    direct, proxy = Client([direct_url], "-"), stack.client()
    raw_direct = direct.post_json("/run", {"task_id": "bench", "args": [1, 0]})
    raw_proxy = proxy.post_json("/add_task", {"service_id": service_id, "args": [1, 0]})
    conn_direct, conn_proxy = await direct.connect(), await proxy.connect()
    direct_s: list[float] = []
    proxy_s: list[float] = []
    with CpuMeter(stack.pids()) as cpu:
        for _ in range(blocks):
            for conn, raw, out in ((conn_direct, raw_direct, direct_s), (conn_proxy, raw_proxy, proxy_s)):
                for _ in range(100):
                    t0 = time.perf_counter()
                    status, body = await conn.request(raw)
                    out.append(time.perf_counter() - t0)
                    if status != 200:
                        raise RuntimeError(f"answered {status}: {body[:300]!r}")
    direct.close()
    proxy.close()
    d, p = summary_ms(direct_s), summary_ms(proxy_s)
    over = {q: round(p[q] - d[q], 3) for q in ("p50", "p90", "p99", "p99.9")}
    say(f"direct POST /run:     {fmt_ms(d)}")
    say(f"through POST /add_task: {fmt_ms(p)}")
    say(f"overhead: p50 {over['p50']:.2f} ms, p99 {over['p99']:.2f} ms "
        f"(targets <= {TARGET_P50_MS:g} ms, <= {TARGET_P99_MS:g} ms)")
    say(f"    {fmt_cpu(cpu.result)}")
    return {"direct_ms": d, "proxy_ms": p, "overhead_ms": over, "cpu": cpu.result,
            "verdict": {"p50": verdict(over["p50"], TARGET_P50_MS, False),
                        "p99": verdict(over["p99"], TARGET_P99_MS, False)}}


async def throughput(stack: BenchStack, service_id: int, concurrencies: list[int], duration: float) -> dict[str, Any]:
    client = stack.client()
    raw = client.post_json("/add_task", {"service_id": service_id, "args": [1, 0]})
    rows = []
    total: Counter[str] = Counter()
    for c in concurrencies:
        shares: Counter[str] = Counter()

        def count(body: bytes, shares: Counter[str] = shares) -> None:
            shares[orjson.loads(body)["answer"]["instance"]] += 1

        with CpuMeter(stack.pids()) as cpu:
            res = await closed_loop(client, lambda: raw, c, duration, 200, on_ok=count)
        total.update(shares)
        balance = max(shares.values()) / max(1, min(shares.values())) if shares else float("inf")
        lat = summary_ms(res.latencies)
        row = {"concurrency": c, "tasks_per_s": round(res.rate, 1), "latency_ms": lat, "shares": dict(shares),
               "balance_max_over_min": round(balance, 3), "other_statuses": res.statuses, "errors": res.errors,
               "cpu": cpu.result, "cpu_us_per_task": cpu_per_unit(cpu.result, res.ok, 1e6)}
        rows.append(row)
        say(f"closed loop, {c:4d} connections: {res.rate:7.1f} tasks/s; {fmt_ms(lat)}; "
            f"non-200 {res.statuses or 0}, errors {res.errors}")
        say(f"    shares {dict(sorted(shares.items()))} (max/min {balance:.3f})")
        say(f"    {fmt_cpu(cpu.result)}")
        say(f"    CPU per task (us): {row['cpu_us_per_task']}")
    client.close()
    best = max(rows, key=lambda r: r["tasks_per_s"])
    balance = max(total.values()) / max(1, min(total.values())) if total else float("inf")
    return {"closed_loop": rows, "best": best, "shares": dict(total), "balance_max_over_min": round(balance, 3)}


async def main_async(args: Any) -> dict[str, Any]:
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    duration = args.duration or (5 if args.quick else 15)
    blocks = 5 if args.quick else 20
    cond = conditions()
    stack = BenchStack(pg_fast=args.pg_fast, keep=args.keep,
                       env={"SKYJOBS_PROXY_ALLOWED_HOSTS": "127.0.0.1", **env_arg(args)})
    stack.extra_env["SKYJOBS_TOKENS"] = f"{stack.token}=bench:admin"  # registering instances is for admins
    async with stack:
        await stack.start("projector", "router", "api")
        urls = await start_instances(stack, args.instances)
        client = stack.client()
        service_id = await register(client, urls)
        say(f"{args.instances} echo instances registered as service {service_id}; warming up")
        raw = client.post_json("/add_task", {"service_id": service_id, "args": [1, 0]})

        async def answered() -> bool:
            return (await client.call(raw))[0] == 200

        await wait_until(answered, timeout=180, interval=0.5, what="the router's first answer")
        await closed_loop(client, lambda: raw, max(concurrencies), 2 if args.quick else 5, 200)
        client.close()
        # Throughput first: it also warms Kafka's JIT, which otherwise dominates the first sequential calls.
        say("\n2. tasks per second, 3. balance")
        thr = await throughput(stack, service_id, concurrencies, duration)
        say("\n1. overhead (one connection, sequential calls)")
        over = await overhead(stack, urls[0], service_id, blocks)
        stack.check_alive()
    best = thr["best"]
    result = {
        "name": NAME, "conditions": cond, "instances": args.instances, "pg_fast": args.pg_fast,
        "overhead": over, "throughput": thr,
        "targets": {"overhead_p50_ms": TARGET_P50_MS, "overhead_p99_ms": TARGET_P99_MS,
                    "tasks_per_s": TARGET_PER_S, "balance_max_over_min": TARGET_BALANCE},
        "verdict": {"overhead_p50": over["verdict"]["p50"], "overhead_p99": over["verdict"]["p99"],
                    "tasks_per_s": verdict(best["tasks_per_s"], TARGET_PER_S, True),
                    "balance": verdict(thr["balance_max_over_min"], TARGET_BALANCE, False)},
    }
    say(f"\nsummary: overhead p50 {over['overhead_ms']['p50']:.2f} ms, p99 {over['overhead_ms']['p99']:.2f} ms; "
        f"best {best['tasks_per_s']:.0f} tasks/s at {best['concurrency']} connections "
        f"(p50 {best['latency_ms']['p50']:.1f} ms, p99 {best['latency_ms']['p99']:.1f} ms); "
        f"balance max/min {thr['balance_max_over_min']:.3f}; verdicts {result['verdict']}")
    return result


def main() -> None:
    p = parser(NAME, __doc__)
    p.add_argument("--concurrency", default="16,64,128", help="closed-loop connection counts (comma separated)")
    p.add_argument("--duration", type=float, default=0, help="seconds per concurrency level")
    p.add_argument("--instances", type=int, default=2, help="echo instances behind the service")
    args = p.parse_args()
    result = run(main_async(args))
    save(NAME, result, args)


if __name__ == "__main__":
    exit_on_interrupt(main)
