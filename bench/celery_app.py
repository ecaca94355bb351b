"""The Celery side of bench.celery_compare: one task running a shell command through subprocess.

Broker and result back end are the Redis at $BENCH_REDIS_URL (db 0 and 1). Started by the benchmark
as `celery -A bench.celery_app worker -P prefork -c N`.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")

app = Celery("skyjobs_bench", broker=f"{REDIS_URL}/0", backend=f"{REDIS_URL}/1")
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue="bench",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=3600,
)


@app.task(name="bench.run_shell")
def run_shell(command: str) -> dict[str, Any]:
    """What a skyjobs job does at its core: /bin/sh -c <command>, its exit code and its output."""
    started = time.time()
    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, stdin=subprocess.DEVNULL)
    return {"exit_code": done.returncode, "stdout": done.stdout.decode(errors="replace"),
            "stderr": done.stderr.decode(errors="replace"), "started": started, "finished": time.time()}
