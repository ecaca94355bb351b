"""What-if switches for the benchmarks: changes to the services patched in at start-up, to measure
a suggestion before making it. Put this directory on the skyjobs processes' PYTHONPATH and set the
switches, e.g.

    python -m bench.projection_lag --env PYTHONPATH=$PWD/bench/whatif --env BENCH_WHATIF=pg-async

BENCH_WHATIF is a comma-separated list of:
  kafka-commit-bg the projector commits its Kafka offsets in the background, at most once a second
  pg-async        the projector's Postgres sessions use synchronous_commit=off
  loop-lag        every process logs (stderr) each stall of its uvloop event loop over 10 ms
  fetch-lag       every process logs (stderr) each record a consumer gets more than 15 ms after it was produced
Nothing here is used unless BENCH_WHATIF is set.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

WHATIF = set(filter(None, os.environ.get("BENCH_WHATIF", "").split(",")))
PROCESS = sys.argv[-1] if sys.argv[:1] == ["-m"] else ""  # `python -m services.cli <process>`

if "kafka-commit-bg" in WHATIF and PROCESS == "projector":
    from aiokafka import AIOKafkaConsumer

    _commit = AIOKafkaConsumer.commit
    _last = {"at": 0.0}

    async def _commit_in_background(self: Any, *args: Any, **kwargs: Any) -> None:
        now = time.monotonic()
        if now - _last["at"] >= 1.0:
            _last["at"] = now
            task = asyncio.ensure_future(_commit(self, *args, **kwargs))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    AIOKafkaConsumer.commit = _commit_in_background  # type: ignore[method-assign]

if "pg-async" in WHATIF and PROCESS == "projector" and "SKYJOBS_DATABASE_URL" in os.environ:
    url = os.environ["SKYJOBS_DATABASE_URL"]
    os.environ["SKYJOBS_DATABASE_URL"] = url + ("&" if "?" in url else "?") + "synchronous_commit=off"

if "loop-lag" in WHATIF:  # log (stderr) every stall of the event loop over 10 ms, with the time it ended
    import uvloop

    _run_forever = uvloop.Loop.run_forever

    async def _lag_monitor() -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.002)
            late = time.perf_counter() - t0 - 0.002
            if late > 0.010:
                print(f"loop-lag {PROCESS or sys.argv[-1]} {time.time():.3f} stalled {late * 1000:.1f} ms",
                      file=sys.stderr, flush=True)

    def _watched_run_forever(self: Any) -> None:
        print(f"loop-lag {PROCESS or sys.argv[-1]} watching", file=sys.stderr, flush=True)
        self.create_task(_lag_monitor())
        _run_forever(self)

    uvloop.Loop.run_forever = _watched_run_forever  # type: ignore[method-assign]

if "fetch-lag" in WHATIF:  # log (stderr) every record a consumer gets more than 15 ms after it was produced
    from aiokafka import AIOKafkaConsumer

    _getmany = AIOKafkaConsumer.getmany

    async def _timed_getmany(self: Any, *args: Any, **kwargs: Any) -> Any:
        got = await _getmany(self, *args, **kwargs)
        now = time.time() * 1000
        for tp, records in got.items():
            for record in records:
                if now - record.timestamp > 15:
                    print(f"fetch-lag {PROCESS or sys.argv[-1]} {tp.topic}:{tp.partition} {now / 1000:.3f} "
                          f"late {now - record.timestamp:.1f} ms", file=sys.stderr, flush=True)
        return got

    AIOKafkaConsumer.getmany = _timed_getmany  # type: ignore[method-assign]
