"""Probe: are the slow 10-branch runs skyjobs's own time, or the machine's?

    flock /tmp/skyjobs-bench.lock .venv/bin/python -m bench.whatif.stalls [runs] [--no-canary] [--sleepers N]

Runs the 10-branch pipeline of bench/pipelines.py one run at a time (default 60 runs) on a fresh
stack, watched by two observers that take no part: a bystander process that sleeps 2 ms in a loop
notes every wake-up more than 8 ms late (the whole machine stalled), and a canary producer that sends
a record every 5 ms to a topic of its own notes every acknowledgement over 10 ms (the broker stalled).
The runs are then given by what they met. With BENCH_WHATIF=loop-lag (and PYTHONPATH=bench/whatif)
the skyjobs processes log their own event-loop stalls to the stack log as well.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bench.common import CpuMeter, fmt_cpu, fmt_ms, say, summary_ms
from bench.pipelines import put_spec, start_service
from bench.stack import BenchStack

BYSTANDER = """
import sys, time
while True:
    t0 = time.perf_counter(); time.sleep(0.002); late = time.perf_counter() - t0 - 0.002
    if late > 0.008:
        print(f"{time.time() - late:.4f} {late:.4f}", flush=True)
"""


async def canary(bootstrap: str, late: list[tuple[float, float]]) -> None:
    """Produce (acks=all) a record every 5 ms to a topic of its own; note every ack over 10 ms."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    with contextlib.suppress(TopicAlreadyExistsError):
        await admin.create_topics([NewTopic("probe.canary", 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0)
    await producer.start()
    try:
        while True:
            t0 = time.time()
            await producer.send_and_wait("probe.canary", b"x")
            if time.time() - t0 > 0.010:
                late.append((t0, time.time() - t0))
            await asyncio.sleep(0.005)
    finally:
        await producer.stop()


def overlap(spans: list[tuple[float, float]], t0: float, t1: float) -> float:
    return sum(late for at, late in spans if at < t1 and at + late > t0)


async def main(runs: int, with_canary: bool, spinners: int) -> None:
    whatif = os.environ.get("BENCH_WHATIF")
    stack = BenchStack(env={"PYTHONPATH": os.path.abspath("bench/whatif"), "BENCH_WHATIF": whatif} if whatif else None)
    async with stack:
        await stack.start("projector", "pipelines", "api")
        service = await start_service(stack)
        client = stack.client()
        status, body = await client.call(put_spec(client, "branches", [[f"GET {service}/slow"] * 10, "jsonObject"]))
        assert status in (200, 201), body
        raw = client.get("/p/branches")
        conn = await client.connect()
        for _ in range(10):
            await conn.request(raw)
        bystander = await asyncio.create_subprocess_exec(sys.executable, "-c", BYSTANDER,
                                                         stdout=asyncio.subprocess.PIPE)
        broker: list[tuple[float, float]] = []
        acks = asyncio.ensure_future(canary(stack.kafka.bootstrap, broker)) if with_canary else None
        others = [await asyncio.create_subprocess_exec(sys.executable, "-c", BYSTANDER,
                                                        stdout=asyncio.subprocess.DEVNULL) for _ in range(spinners)]
        await asyncio.sleep(0.5)
        spans = []
        with CpuMeter(stack.pids()) as cpu:
            for _ in range(runs):
                t0 = time.time()
                status, body = await conn.request(raw)
                spans.append((t0, time.time()))
                assert status == 200, body
        if acks is not None:
            acks.cancel()
        bystander.kill()
        for other in others:
            other.kill()
            await other.wait()
        out, _ = await bystander.communicate()
        client.release(conn)
        stalls = [(float(a), float(b)) for a, b in (line.split() for line in out.decode().splitlines())]
        groups: dict[str, list[float]] = {"neither": [], "machine": [], "broker": [], "both": []}
        for t0, t1 in spans:
            machine, slow_ack = overlap(stalls, t0, t1), overlap(broker, t0, t1)
            groups["both" if machine and slow_ack else "machine" if machine else "broker" if slow_ack else "neither"
                   ].append(t1 - t0)
        say(fmt_cpu(cpu.result))
        say(f"{runs} runs; the bystander woke late {len(stalls)} times, "
            f"{sum(late for _, late in stalls) * 1000:.0f} ms in all, worst {max([0, *(s for _, s in stalls)]) * 1000:.0f} ms")
        say(f"all runs:                     {fmt_ms(summary_ms([t1 - t0 for t0, t1 in spans]))}")
        say(f"the canary's produce was acknowledged late {len(broker)} times, worst "
            f"{max([0, *(s for _, s in broker)]) * 1000:.0f} ms")
        for name, walls in groups.items():
            if walls:
                say(f"runs with a stall seen by {name + ':':9} {fmt_ms(summary_ms(walls))}")
        stack._log.flush()
        lags = [line for line in stack.log_path.read_text(errors="replace").splitlines() if "loop-lag" in line]
        if lags:
            say(f"event-loop stalls logged by the skyjobs processes: {len(lags)}")


if __name__ == "__main__":
    args = argparse.ArgumentParser(prog="python -m bench.whatif.stalls", description=__doc__.split("\n\n")[0])
    args.add_argument("runs", type=int, nargs="?", default=60)
    args.add_argument("--no-canary", action="store_true", help="no canary producer (it keeps the broker busy)")
    args.add_argument("--sleepers", type=int, default=0, help="more bystanders, to keep the cores from idling")
    a = args.parse_args()
    asyncio.run(main(a.runs, not a.no_canary, a.sleepers))
