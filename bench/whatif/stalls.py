"""Probe: are the slow 10-branch runs skyjobs's own time, or the machine's?

    flock /tmp/skyjobs-bench.lock .venv/bin/python -m bench.whatif.stalls [runs]

Runs the 10-branch pipeline of bench/pipelines.py one run at a time (default 60 runs) while a
bystander process that takes no part (it sleeps 2 ms in a loop) records every wake-up more than 8 ms
late, and the CPU of every process is measured. A run during which the bystander was late was
slowed by something outside the skyjobs processes (a stall of the whole machine); the figures are
given for the runs with and without one. With BENCH_WHATIF=loop-lag (and PYTHONPATH=bench/whatif)
the skyjobs processes log their own event-loop stalls to the stack log as well.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

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


async def main(runs: int) -> None:
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
        await asyncio.sleep(0.5)
        spans = []
        with CpuMeter(stack.pids()) as cpu:
            for _ in range(runs):
                t0 = time.time()
                status, body = await conn.request(raw)
                spans.append((t0, time.time()))
                assert status == 200, body
        bystander.kill()
        out, _ = await bystander.communicate()
        client.release(conn)
        stalls = [(float(a), float(b)) for a, b in (line.split() for line in out.decode().splitlines())]
        stalled, clean = [], []
        for t0, t1 in spans:
            hit = sum(late for at, late in stalls if at < t1 and at + late > t0)
            (stalled if hit else clean).append(t1 - t0)
        say(fmt_cpu(cpu.result))
        say(f"{runs} runs; the bystander woke late {len(stalls)} times, "
            f"{sum(late for _, late in stalls) * 1000:.0f} ms in all, worst {max([0, *(s for _, s in stalls)]) * 1000:.0f} ms")
        say(f"all runs:                     {fmt_ms(summary_ms([t1 - t0 for t0, t1 in spans]))}")
        if clean:
            say(f"runs the bystander saw no stall in ({len(clean)}): {fmt_ms(summary_ms(clean))}")
        if stalled:
            say(f"runs with a stall ({len(stalled)}):              {fmt_ms(summary_ms(stalled))}")
        stack._log.flush()
        lags = [line for line in stack.log_path.read_text(errors="replace").splitlines() if "loop-lag" in line]
        if lags:
            say(f"event-loop stalls logged by the skyjobs processes: {len(lags)}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 60))
