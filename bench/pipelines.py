"""Pipelines (seed 002) on the full stack: API, `skyjobs pipelines` worker(s), Kafka, projector, Postgres.

    python -m bench.pipelines [--quick] [--workers 1] [--concurrency 16,32,64] [--duration 15]

A trivial local service (bench/pipeline_service.py) runs in its own process. Three figures:

1. per-step overhead over calling the same service directly: one connection, alternating blocks of
   100 calls of the service and 100 calls of a 1-step pipeline (/p/one) that calls it; overhead =
   pipeline percentile - direct percentile, for a GET step and a POST step (a POST is write-ahead:
   the worker's journal records it in Kafka before sending). Also the marginal cost of a step: a
   5-step pipeline against the 1-step one, divided by 4. Targets: p50 <= 5 ms, p99 <= 25 ms. Steady
   state, as a service that runs for days: the same calls are first made, not counted, until the
   broker's JIT compiler is done with them (a pass of them in which its threads used under 0.02 of a
   core; at most 120 s; `--no-warm-up` skips it). Until then the compiler takes up to a quarter of the
   2 cores and the overhead is ~3 ms higher (BENCHMARKS.md, stop 15);
2. 10 parallel branches of a 100 ms service then a jsonObject join: wall time of each run (30 runs,
   one at a time), after runs of 10, not counted, until the broker's JIT compiler is idle again (branch
   runs use broker paths the earlier phases did not: parts, the joins' compacted topic; while they
   were being compiled, 5-7 runs of the first 30 met two ~50 ms delays). Target: within 130 ms;
3. runs per second of a 3-step serial pipeline (POST, POST, POST) against the trivial service,
   closed loop at a few connection counts. Target: >= 300 runs/s. With `--throughput-pipeline fork`,
   two GET branches and a jsonObject join instead: every run goes through the joins table (held for
   more than 180 s, `--duration 300`, it shows what forgetting ended runs costs).
Everything shares the machine's cores, the load generator included (its CPU is reported).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from bench.common import (
    CpuMeter,
    compiler_seconds,
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

NAME = "pipelines"
TARGET_P50_MS = 5.0
TARGET_P99_MS = 25.0
TARGET_BRANCHES_MS = 130.0
TARGET_RUNS_PER_S = 300.0
JIT_IDLE = 0.02  # cores: the broker's JIT compiler threads over one warm-up pass
WARM_UP_MAX = 120.0  # seconds


def put_spec(client: Client, name: str, spec: list[Any]) -> bytes:
    payload = orjson.dumps(spec)
    return (f"PUT /api/pipelines/{name} HTTP/1.1\r\nHost: {client._host()}\r\nAuthorization: Bearer {client.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload


async def start_service(stack: BenchStack) -> str:
    port = free_port()
    await stack.supervisor.start("service", [sys.executable, "-m", "bench.pipeline_service", "--port", str(port)],
                                 restart=False)
    url = f"http://127.0.0.1:{port}"
    client = Client([url], "-")

    async def answers() -> bool:
        try:
            return (await client.call(client.get("/t")))[0] == 200
        except OSError:
            return False

    await wait_until(answers, timeout=60, interval=0.1, what="the benchmark's service")
    client.close()
    return url


async def alternating(pairs: list[tuple[Client, bytes]], blocks: int) -> list[list[float]]:
    conns = [await c.connect() for c, _ in pairs]
    out: list[list[float]] = [[] for _ in pairs]
    for _ in range(blocks):
        for i, ((_, raw), conn) in enumerate(zip(pairs, conns, strict=True)):
            for _ in range(100):
                t0 = time.perf_counter()
                status, body = await conn.request(raw)
                out[i].append(time.perf_counter() - t0)
                if status != 200:
                    raise RuntimeError(f"answered {status}: {body[:300]!r}")
    for (c, _), conn in zip(pairs, conns, strict=True):
        c.release(conn)
    return out


def _silent(*_: object) -> None:
    pass


async def overhead(stack: BenchStack, service: str, blocks: int, show: bool = True) -> dict[str, Any]:
    tell = say if show else _silent
    direct, api = Client([service], "-"), stack.client()
    out: dict[str, Any] = {}
    for method in ("GET", "POST"):
        raw_direct = direct.get("/t") if method == "GET" else direct.post_json("/t", {})
        raw_pipe = api.get(f"/p/one-{method}") if method == "GET" else api.post_json(f"/p/one-{method}", {})
        with CpuMeter(stack.pids()) as cpu:
            direct_s, piped_s = await alternating([(direct, raw_direct), (api, raw_pipe)], blocks)
        d, p = summary_ms(direct_s), summary_ms(piped_s)
        over = {q: round(p[q] - d[q], 3) for q in ("p50", "p90", "p99", "p99.9")}
        tell(f"{method} step: direct {fmt_ms(d)}")
        tell(f"{method} step: 1-step pipeline {fmt_ms(p)}")
        tell(f"{method} step: overhead p50 {over['p50']:.2f} ms, p99 {over['p99']:.2f} ms "
             f"(targets <= {TARGET_P50_MS:g} ms, <= {TARGET_P99_MS:g} ms)")
        tell(f"    {fmt_cpu(cpu.result)}")
        tell(f"    CPU per run (ms): {cpu_per_unit(cpu.result, len(piped_s) + len(direct_s))}")
        out[method] = {"direct_ms": d, "pipeline_ms": p, "overhead_ms": over, "cpu": cpu.result,
                       "verdict": {"p50": verdict(over["p50"], TARGET_P50_MS, False),
                                   "p99": verdict(over["p99"], TARGET_P99_MS, False)}}
    one, five = await alternating([(api, api.post_json("/p/one-POST", {})), (api, api.post_json("/p/five", {}))],
                                  max(1, blocks // 2))
    s1, s5 = summary_ms(one), summary_ms(five)
    marginal = {q: round((s5[q] - s1[q]) / 4, 3) for q in ("p50", "p90", "p99")}
    tell(f"5-step POST pipeline {fmt_ms(s5)}; each step beyond the first: p50 {marginal['p50']:.2f} ms, "
         f"p99 {marginal['p99']:.2f} ms (the service's own time included)")
    out["marginal_step_ms"] = marginal
    out["five_step_ms"] = s5
    direct.close()
    api.close()
    return out


async def until_jit_idle(stack: BenchStack, calls: Callable[[], Awaitable[Any]], what: str) -> None:
    """`calls()`, not counted, until a pass of them leaves the broker's JIT compiler idle."""
    kafka = stack.pids()["kafka"]
    started = time.monotonic()
    passes = 0
    while True:
        compiled, began = compiler_seconds(kafka), time.monotonic()
        await calls()
        passes += 1
        busy = (compiler_seconds(kafka) - compiled) / (time.monotonic() - began)
        if busy < JIT_IDLE or time.monotonic() - started > WARM_UP_MAX:
            break
    say(f"(warm-up: {passes} passes of {what} in {time.monotonic() - started:.0f} s, not counted; "
        f"the broker's JIT compiler used {busy:.3f} cores in the last)")


async def branches(stack: BenchStack, runs: int, warm: bool) -> dict[str, Any]:
    api = stack.client()
    conn = await api.connect()
    raw = api.get("/p/branches")
    for _ in range(5):
        await conn.request(raw)
    if warm:  # the broker compiles the paths of parts and joins only now (module docstring)

        async def ten() -> None:
            for _ in range(10):
                await conn.request(raw)

        await until_jit_idle(stack, ten, "10 runs")
    walls = []
    with CpuMeter(stack.pids()) as cpu:
        for _ in range(runs):
            t0 = time.perf_counter()
            status, body = await conn.request(raw)
            walls.append(time.perf_counter() - t0)
            if status != 200 or orjson.loads(body).get("length") != 10:
                raise RuntimeError(f"branches answered {status}: {body[:300]!r}")
    api.release(conn)
    api.close()
    s = summary_ms(walls)
    say(f"10 parallel branches of a 100 ms service + jsonObject: {fmt_ms(s)} (target {TARGET_BRANCHES_MS:g} ms)")
    say(f"    {fmt_cpu(cpu.result)}")
    return {"wall_ms": s, "cpu": cpu.result, "verdict": verdict(s["p50"], TARGET_BRANCHES_MS, False)}


async def throughput(stack: BenchStack, concurrencies: list[int], duration: float, pipeline: str) -> dict[str, Any]:
    client = stack.client()
    raw = client.post_json(f"/p/{pipeline}", {"n": 1})
    rows = []
    for c in concurrencies:
        with CpuMeter(stack.pids()) as cpu:
            res = await closed_loop(client, lambda: raw, c, duration, 200)
        lat = summary_ms(res.latencies)
        row = {"concurrency": c, "runs_per_s": round(res.rate, 1), "latency_ms": lat, "other_statuses": res.statuses,
               "errors": res.errors, "cpu": cpu.result, "cpu_ms_per_run": cpu_per_unit(cpu.result, res.ok)}
        rows.append(row)
        say(f"closed loop, {c:4d} connections: {res.rate:7.1f} runs/s; {fmt_ms(lat)}; "
            f"non-200 {res.statuses or 0}, errors {res.errors}")
        say(f"    {fmt_cpu(cpu.result)}")
        say(f"    CPU per run (ms): {row['cpu_ms_per_run']}")
    client.close()
    best = max(rows, key=lambda r: r["runs_per_s"])
    return {"closed_loop": rows, "best": best, "verdict": verdict(best["runs_per_s"], TARGET_RUNS_PER_S, True)}


async def quiet(stack: BenchStack) -> None:
    """Wait until the projector has caught up with the throughput phase (it would share the cores)."""
    client = stack.client()
    started = time.monotonic()

    async def caught_up() -> bool:
        status, body = await client.call(client.get("/metrics"))
        lag = sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
                  if line.startswith("skyjobs_projection_lag_events{"))
        return status == 200 and lag == 0

    await wait_until(caught_up, timeout=300, interval=0.5, what="the projector to catch up")
    client.close()
    say(f"(the projector caught up {time.monotonic() - started:.1f} s after the throughput phase)")


async def main_async(args: Any) -> dict[str, Any]:
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    duration = args.duration or (5 if args.quick else 15)
    blocks = 3 if args.quick else 10
    cond = conditions()
    stack = BenchStack(pg_fast=args.pg_fast, keep=args.keep, env=env_arg(args))
    async with stack:
        names = ["projector", "pipelines", "api"]
        await stack.start(*names)
        for i in range(1, args.workers):
            await stack.supervisor.start(f"pipelines{i + 1}", [sys.executable, "-m", "services.cli", "pipelines"],
                                         stack.env)
        service = await start_service(stack)
        client = stack.client()
        specs = {"one-GET": [f"GET {service}/t"], "one-POST": [f"POST {service}/t"],
                 "five": [f"POST {service}/t"] * 5, "three": [f"POST {service}/t"] * 3,
                 "branches": [[f"GET {service}/slow"] * 10, "jsonObject"],
                 "fork": [[f"GET {service}/t"] * 2, "jsonObject"]}
        for name, spec in specs.items():
            status, body = await client.call(put_spec(client, name, spec))
            if status not in (200, 201):
                raise RuntimeError(f"PUT {name} answered {status}: {body[:300]!r}")
        raw = client.post_json(f"/p/{args.throughput_pipeline}", {"n": 1})

        async def answered() -> bool:
            return (await client.call(raw))[0] == 200

        started = time.monotonic()
        await wait_until(answered, timeout=180, interval=0.5, what="the first pipeline run")
        say(f"first run answered after {time.monotonic() - started:.1f} s; warming up")
        await closed_loop(client, lambda: raw, max(concurrencies), 2 if args.quick else 5, 200)
        client.close()
        say("\n3. runs per second, " + ("3-step serial pipeline" if args.throughput_pipeline == "three" else "2 branches + jsonObject"))
        thr = await throughput(stack, concurrencies, duration, args.throughput_pipeline)
        await quiet(stack)
        say("\n1. per-step overhead (one connection, sequential calls)")
        if not args.no_warm_up:
            await until_jit_idle(stack, lambda: overhead(stack, service, blocks, show=False), "the same calls")
        over = await overhead(stack, service, blocks)
        say("\n2. 10 parallel branches")
        par = await branches(stack, 10 if args.quick else 30, not args.no_warm_up)
        stack.check_alive()
    best = thr["best"]
    result = {
        "name": NAME, "conditions": cond, "workers": args.workers, "pg_fast": args.pg_fast,
        "warm_up": not args.no_warm_up,
        "overhead": over, "branches": par, "throughput": thr,
        "targets": {"overhead_p50_ms": TARGET_P50_MS, "overhead_p99_ms": TARGET_P99_MS,
                    "branches_ms": TARGET_BRANCHES_MS, "runs_per_s": TARGET_RUNS_PER_S},
        "verdict": {"overhead_get": over["GET"]["verdict"], "overhead_post": over["POST"]["verdict"],
                    "branches": par["verdict"], "runs_per_s": thr["verdict"]},
    }
    say(f"\nsummary: overhead GET p50 {over['GET']['overhead_ms']['p50']:.2f} / p99 "
        f"{over['GET']['overhead_ms']['p99']:.2f} ms, POST p50 {over['POST']['overhead_ms']['p50']:.2f} / p99 "
        f"{over['POST']['overhead_ms']['p99']:.2f} ms; 10 branches p50 {par['wall_ms']['p50']:.1f} ms "
        f"(max {par['wall_ms']['max']:.1f}); best {best['runs_per_s']:.0f} runs/s at {best['concurrency']} connections; "
        f"verdicts {result['verdict']}")
    return result


def main() -> None:
    p = parser(NAME, __doc__)
    p.add_argument("--concurrency", default="16,32,64", help="closed-loop connection counts (comma separated)")
    p.add_argument("--duration", type=float, default=0, help="seconds per concurrency level")
    p.add_argument("--workers", type=int, default=1, help="`skyjobs pipelines` processes")
    p.add_argument("--throughput-pipeline", choices=("three", "fork"), default="three",
                   help="figure 3's pipeline: three POST steps (the target's), or two GET branches and a "
                        "jsonObject join (every run goes through the joins table)")
    p.add_argument("--no-warm-up", action="store_true",
                   help="measure figures 1 and 2 at once, without first making their calls until the broker's "
                        "JIT is idle")
    args = p.parse_args()
    result = run(main_async(args))
    save(NAME, result, args)


if __name__ == "__main__":
    exit_on_interrupt(main)
