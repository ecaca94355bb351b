"""What-if switches for the benchmarks: changes to the services patched in at start-up, to measure
a suggestion before making it. Put this directory on the skyjobs processes' PYTHONPATH and set the
switches, e.g.

    python -m bench.projection_lag --env PYTHONPATH=$PWD/bench/whatif --env BENCH_WHATIF=pg-async

BENCH_WHATIF is a comma-separated list of:
  kafka-commit-bg the projector commits its Kafka offsets in the background, at most once a second
  pg-async        the projector's Postgres sessions use synchronous_commit=off
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
