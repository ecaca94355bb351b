"""A fresh local skyjobs stack for one benchmark: Kafka + Postgres on free ports, then skyjobs processes.

Unlike the test stack (tests/conftest.py) it uses production settings: Kafka without `fast_start`
(C2 JIT, default broker session timeouts), Postgres durable unless `--pg-fast` (fsync, synchronous
commit and full page writes on), default SKYJOBS_* settings except ports, data dir and tokens.
Everything lives in a temp dir that is removed afterwards (unless --keep): a benchmark never sees
another one's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from bench.common import say
from bench.http import Client, HttpError, wait_until
from infra.local import LocalKafka, LocalPostgres, free_port, kafka_libs, start_all
from services.supervisor import Supervisor


class _Postgres(LocalPostgres):
    """LocalPostgres with an optional shared_buffers override (the repo's default is 256MB)."""

    def __init__(self, data_dir: Path, fast: bool, shared_buffers: str | None) -> None:
        super().__init__(data_dir, fast=fast)
        self.shared_buffers = shared_buffers

    def settings(self) -> dict[str, str]:
        conf = super().settings()
        if self.shared_buffers:
            conf["shared_buffers"] = f"'{self.shared_buffers}'"
        return conf


class BenchStack:
    def __init__(self, *, pg_fast: bool = False, keep: bool = False, api_procs: int = 1,
                 users: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 shared_buffers: str | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="skyjobs-bench-"))
        os.chmod(self.root, 0o755)  # jobs run as nobody: they must reach data/work
        self.pg_fast = pg_fast
        self.keep = keep
        self.api_ports = [free_port() for _ in range(api_procs)]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.api_ports]
        # user "bench", and more users for benchmarks that spread jobs over several owners
        self.tokens = {name: secrets.token_urlsafe(16) for name in ("bench", *users)}
        self.token = self.tokens["bench"]
        self.kafka = LocalKafka(self.root / "kafka")  # no fast_start: production JVM and broker settings
        self.postgres = _Postgres(self.root / "postgres", pg_fast, shared_buffers)
        self.data_dir = self.root / "data"
        self.data_dir.mkdir()
        self.log_path = self.root / "stack.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.supervisor = Supervisor(colour=False, out=self._log)
        self.extra_env = env or {}
        self.env: dict[str, str] = {}

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start_infra(self) -> None:
        started = time.monotonic()
        kafka_libs()
        await asyncio.to_thread(start_all, self.kafka, self.postgres)
        self.env = {
            "SKYJOBS_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "SKYJOBS_DATABASE_URL": self.postgres.dsn,
            "SKYJOBS_DATA_DIR": str(self.data_dir),
            "SKYJOBS_TOKENS": ",".join(f"{t}={name}:user" for name, t in self.tokens.items()),
            "SKYJOBS_LOG_LEVEL": "WARNING",
            **self.extra_env,
        }
        setup = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli", "setup",
                                                     env={**os.environ, **self.env},
                                                     stdout=self._log, stderr=self._log)
        if await setup.wait() != 0:
            raise RuntimeError(f"skyjobs setup failed (log: {self.log_path})")
        say(f"stack: Kafka {self.kafka.bootstrap} + Postgres {'(fast) ' if self.pg_fast else ''}"
            f"{self.postgres.dsn} (shared_buffers {self.postgres.settings()['shared_buffers']}) "
            f"ready in {time.monotonic() - started:.1f} s")

    async def start(self, *names: str) -> None:
        """Start skyjobs processes: api (one per port), worker, executor, projector; `name:N` starts N."""
        python = sys.executable
        for name in names:
            if name == "api":
                for i, port in enumerate(self.api_ports):
                    await self.supervisor.start("api" if i == 0 else f"api{i + 1}",
                                                [python, "-m", "services.cli", "api"],
                                                {**self.env, "SKYJOBS_PORT": str(port)})
            else:  # "worker:2" starts two workers (worker, worker2)
                name, _, count = name.partition(":")
                for i in range(int(count or 1)):
                    await self.supervisor.start(name if i == 0 else f"{name}{i + 1}",
                                                [python, "-m", "services.cli", name], self.env)
        if "api" in names:
            await self.wait_healthy()

    async def wait_healthy(self) -> None:
        for url in self.urls:
            client = Client([url], self.token)

            async def healthy(client: Client = client) -> bool:
                status, _ = await client.call(client.get("/healthz"))
                return status == 200

            try:
                await wait_until(healthy, timeout=120, interval=0.2, what=f"API health at {url}")
            finally:
                client.close()

    async def wait_worker_ready(self, timeout: float = 180) -> float:
        """Run `true` end to end until one succeeds: the worker owns its partitions. Returns seconds."""
        started = time.monotonic()
        client = Client(self.urls, self.token)
        try:
            status, body = await client.call(client.post_json("/api/job/run", {"command": "true"}))
            if status != 201:
                raise RuntimeError(f"run answered {status}: {body!r}")
            job_id = orjson.loads(body)["job_id"]

            async def done() -> bool:
                status, body = await client.call(client.get(f"/api/job/job_info/{job_id}"))
                return status == 200 and orjson.loads(body)["state"] == "succeeded"

            await wait_until(done, timeout=timeout, interval=0.2, what="first job to succeed")
        finally:
            client.close()
        return time.monotonic() - started

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.supervisor.stop()
        await asyncio.to_thread(self.kafka.stop)
        await asyncio.to_thread(self.postgres.stop)
        self._log.close()
        if self.keep:
            say(f"stack dir kept: {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    async def __aenter__(self) -> BenchStack:
        try:
            await self.start_infra()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None and exc_type is not KeyboardInterrupt:
            self.show_log_tail()
        await self.stop()

    def show_log_tail(self, chars: int = 4000) -> None:
        for path in (self.log_path, self.kafka.log_path, self.postgres.log_path):
            with contextlib.suppress(OSError):
                self._log.flush()
                text = path.read_text(errors="replace")[-chars:]
                say(f"----- end of {path}\n{text}")

    # --- helpers ----------------------------------------------------------------------------------

    def client(self, token: str | None = None) -> Client:
        return Client(self.urls, token or self.token)

    async def db(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.postgres.dsn)

    def pids(self) -> dict[str, int]:
        """Root pids of every server process, for CpuMeter (each counted with its descendants)."""
        pids = {name: child.process.pid for name, child in self.supervisor.children.items()
                if child.process is not None}
        pids["kafka"] = self.kafka.pid or 0
        pids["postgres"] = self.postgres.pid or 0
        return pids

    def check_alive(self) -> None:
        """Raise if a skyjobs process restarted (it would distort the figures)."""
        self.kafka.check_alive()
        self.postgres.check_alive()


async def submit_burst(client: Client, n: int, command: str = "true", concurrency: int = 64) -> list[str]:
    """POST n runs with `concurrency` connections; the job ids in submission order."""
    raw = client.post_json("/api/job/run", {"command": command})
    ids: list[str] = []
    todo = iter(range(n))

    async def loop() -> None:
        conn = await client.connect()
        for _ in todo:
            status, body = await conn.request(raw)
            if status != 201:
                raise HttpError(f"run answered {status}: {body[:200]!r}")
            ids.append(orjson.loads(body)["job_id"])
        client.release(conn)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return ids


async def _serve(args: Any) -> None:
    import signal

    async with BenchStack(pg_fast=args.pg_fast, keep=args.keep, api_procs=args.api_procs) as stack:
        await stack.start(*args.processes.split(","))
        say(f"API {' '.join(stack.urls)}  token {stack.token}  Kafka {stack.kafka.bootstrap}  "
            f"Postgres {stack.postgres.dsn}  logs {stack.root}")
        say(f"pids {stack.pids()}")
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await asyncio.wait_for(stop.wait(), args.seconds)


if __name__ == "__main__":
    import argparse

    import uvloop

    p = argparse.ArgumentParser(prog="python -m bench.stack", description="run a bench stack (for profiling)")
    p.add_argument("--processes", default="projector,worker,api")
    p.add_argument("--api-procs", type=int, default=1)
    p.add_argument("--pg-fast", action="store_true")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--seconds", type=float, default=3600, help="stop after this long")
    with contextlib.suppress(TimeoutError, KeyboardInterrupt):
        uvloop.run(_serve(p.parse_args()))
