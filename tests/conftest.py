"""Session fixtures: real Kafka and Postgres, and the skyjobs processes running against them.

Integration and end-to-end tests share one stack per session (2 cores: starting Kafka once
matters). Tests use unique ids and users, so they never see each other's data.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from infra.local import free_port
from services.cli import PROCESSES
from services.supervisor import Supervisor
from tests.infra_fixtures import Infra, running_infra

T = TypeVar("T")
ARTIFACTS = Path(__file__).parent / "artifacts"


async def eventually(probe: Callable[[], Awaitable[T]], timeout: float = 30, interval: float = 0.05,
                     what: str = "condition") -> T:
    """Await `probe()` until it returns something truthy, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout} s (last: {last!r})")


@dataclass
class Stack:
    """The running system: its URL, tokens, environment and the supervisor of its processes."""

    infra: Infra
    url: str
    env: dict[str, str]
    supervisor: Supervisor
    data_dir: Path
    tokens: dict[str, str] = field(default_factory=dict)  # user name -> token

    def client(self, user: str = "admin", **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30, **kwargs)

    async def start(self, name: str, restart: bool = True) -> None:
        await self.supervisor.start(name, [sys.executable, "-m", "services.cli", name], self.env, restart=restart)


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    root = Path(tempfile.mkdtemp(prefix="skyjobs-test-"))
    try:
        with running_infra(root) as running:
            yield running
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
async def stack(infra: Infra) -> AsyncIterator[Stack]:
    data_dir = Path(tempfile.mkdtemp(prefix="skyjobs-test-data-"))
    os.chmod(data_dir, 0o755)
    tokens = {name: secrets.token_urlsafe(12) for name in ("admin", "alice", "bob", "carol", "fuzz")}
    port = free_port()
    env = {
        "SKYJOBS_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
        "SKYJOBS_DATABASE_URL": infra.database_url,
        "SKYJOBS_DATA_DIR": str(data_dir),
        "SKYJOBS_WORK_DIR": str(data_dir / "jobs"),  # not the default <data_dir>/work: the setting is used
        "SKYJOBS_PORT": str(port),
        "SKYJOBS_TOKENS": ",".join(f"{t}={name}:{'admin' if name == 'admin' else 'user'}" for name, t in tokens.items()),
        "SKYJOBS_PARTITIONS": "4",
        "SKYJOBS_LEASE_TIMEOUT": "4",
        "SKYJOBS_HEARTBEAT_INTERVAL": "0.5",
        "SKYJOBS_CANCEL_GRACE": "1",
        "SKYJOBS_JOB_FORGET_AFTER": "2",  # deleted jobs leave the lifecycle table 2 s after their finish
        "SKYJOBS_JOB_FILE_SIZE_BYTES": str(64 * 1024 * 1024),  # Flink unpacks a 24 MB jar
        "SKYJOBS_JOB_MEMORY_BYTES": str(2 * 1024**3),  # Flink's JVM needs 1.2 GiB of address space
        "SKYJOBS_KAFKA_TIMEOUT": "3",
        "SKYJOBS_LOG_LEVEL": os.environ.get("SKYJOBS_TEST_LOG_LEVEL", "WARNING"),
        # the task proxy: instances only on this machine, quick health checks, a small queue (429 test)
        "SKYJOBS_PROXY_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SKYJOBS_PROXY_HEALTH_INTERVAL": "0.5",
        "SKYJOBS_PROXY_PROBE_TIMEOUT": "1",
        "SKYJOBS_PROXY_NO_INSTANCE_WAIT": "2",
        "SKYJOBS_PROXY_CALL_TIMEOUT": "10",
        "SKYJOBS_PROXY_QUEUE": "40",
        # pipelines: steps may call local test services; a short run timeout for the fault tests
        "SKYJOBS_PIPELINE_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SKYJOBS_PIPELINE_RUN_TIMEOUT": "60",
        "SKYJOBS_PIPELINE_MAX_FANOUT": "20",  # as the conformance cases expect
    }
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "stack.log", "w")  # noqa: SIM115
    supervisor = Supervisor(colour=False, out=log)
    stack = Stack(infra, f"http://127.0.0.1:{port}", env, supervisor, data_dir, tokens)
    try:
        setup = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli", "setup",
                                                     env={**os.environ, **env})
        assert await setup.wait() == 0, "skyjobs setup failed"
        for name in PROCESSES:
            await stack.start(name)

        async def healthy() -> bool:
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"{stack.url}/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(healthy, timeout=120, interval=0.2, what="API health")
        await _wait_worker_ready(stack)
        await _wait_pipelines_ready(stack)
        yield stack
    finally:
        await supervisor.stop()
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)


async def _wait_worker_ready(stack: Stack) -> None:
    """The first job run end to end: the worker has joined its group and owns the partitions."""
    async with stack.client() as client:
        job_id = (await client.post("/api/job/run", json={"command": "true"})).json()["job_id"]

        async def done() -> bool:
            return (await client.get(f"/api/job/job_info/{job_id}")).json().get("state") == "succeeded"

        await eventually(done, timeout=120, interval=0.2, what="first job to succeed")


async def _wait_pipelines_ready(stack: Stack) -> None:
    """A pipeline saved and run end to end: the pipeline worker owns its partitions."""
    async with stack.client() as client:

        async def ran() -> bool:
            saved = await client.put("/api/pipelines/stack-ready", json=["~$this"])
            return saved.status_code in (200, 201) and (await client.post("/p/stack-ready", json={})).status_code == 200

        await eventually(ran, timeout=120, interval=0.2, what="a first pipeline run")


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with stack.client("admin") as client:
        yield client


@pytest.fixture
async def alice(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with stack.client("alice") as client:
        yield client


@pytest.fixture
async def bob(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with stack.client("bob") as client:
        yield client


async def wait_state(client: httpx.AsyncClient, job_id: str, *states: str, timeout: float = 30) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        info = (await client.get(f"/api/job/job_info/{job_id}")).json()
        return info if info.get("state") in states else None

    return await eventually(probe, timeout=timeout, what=f"job {job_id} in {states}")


@pytest.fixture
async def carol(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A user whose requests are all invalid: nothing may ever be written for her."""
    async with stack.client("carol") as client:
        yield client
