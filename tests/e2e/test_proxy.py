"""Worker services and the task proxy (seed 004) end to end: real instances as subprocesses, real
router, Kafka and Postgres. Every test registers its own instances under a unique service name and
removes them at the end.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from PIL import Image

from infra.local import free_port
from tests.conftest import ARTIFACTS, Stack, eventually

LONG = httpx.Timeout(120)


@dataclass
class Worker:
    url: str
    process: asyncio.subprocess.Process
    instance_id: str = ""


@dataclass
class Workers:
    """Worker-service instances started by one test, registered through the API, removed afterwards."""

    admin: httpx.AsyncClient
    started: list[Worker] = field(default_factory=list)

    async def start(self, module: str = "workers.echo_service", *args: str) -> Worker:
        port = free_port()
        log = open(ARTIFACTS / "workers.log", "ab")  # noqa: SIM115 - the child holds it
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, "--port", str(port), *args, stdout=log, stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        worker = Worker(f"http://127.0.0.1:{port}", process)
        self.started.append(worker)

        async def answers() -> bool:
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"{worker.url}/me")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(answers, timeout=60, interval=0.1, what=f"{module} on port {port}")
        return worker

    async def echo(self, name: str, *args: str) -> Worker:
        return await self.start("workers.echo_service", "--name", name, *args)

    async def register(self, worker: Worker) -> dict[str, Any]:
        response = await self.admin.post("/services", json={"url": worker.url})
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        worker.instance_id = body["instance_id"]
        return body

    def kill(self, worker: Worker) -> None:
        if worker.process.returncode is None:
            worker.process.kill()

    async def close(self) -> None:
        for worker in self.started:
            if worker.instance_id:
                await self.admin.delete(f"/services/{worker.instance_id}")
            self.kill(worker)
            await worker.process.wait()


@pytest.fixture
async def workers(admin: httpx.AsyncClient) -> AsyncIterator[Workers]:
    pool = Workers(admin)
    try:
        yield pool
    finally:
        await pool.close()


def unique(prefix: str = "echo") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def add_task(client: httpx.AsyncClient, service_id: int, args: list[Any], **params: Any) -> httpx.Response:
    return await client.post("/add_task", json={"service_id": service_id, "args": args}, params=params,
                             timeout=LONG)


async def task_state(client: httpx.AsyncClient, task_id: str, *states: str, timeout: float = 60) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        response = await client.get(f"/task_info/{task_id}")
        assert response.status_code == 200, response.text
        info: dict[str, Any] = response.json()
        return info if info["state"] in states else None

    return await eventually(probe, timeout=timeout, interval=0.1, what=f"task {task_id} in {states}")


@pytest.fixture(scope="module", autouse=True)
async def router_ready(stack: Stack) -> None:
    """One task answered end to end: the router has joined its consumer group (first start is slow)."""
    async with stack.client("admin") as admin:
        pool = Workers(admin)
        try:
            worker = await pool.echo(unique("warm-up"))
            service_id = (await pool.register(worker))["service_id"]

            async def answered() -> bool:
                return (await add_task(admin, service_id, [1, 0], timeout=20)).status_code == 200

            await eventually(answered, timeout=180, interval=0.5, what="the router's first answer")
        finally:
            await pool.close()


# --- the seed's flow --------------------------------------------------------------------------------


async def test_register_list_describe_and_add_task(workers: Workers, alice: httpx.AsyncClient) -> None:
    name = unique()
    worker = await workers.echo(name)
    registered = await workers.register(worker)
    assert registered["service_name"] == name and registered["state"] == "up" and registered["url"] == worker.url
    service_id = registered["service_id"]
    assert isinstance(service_id, int)

    listed = (await alice.get("/services_list")).json()
    assert {"service_id": service_id, "service_name": name} in listed
    assert all(set(item) == {"service_id", "service_name"} for item in listed)
    info = (await alice.get(f"/service_info/{service_id}")).json()
    assert info == {
        "service_id": service_id, "service_name": name,
        "service_description": "Answers its value back, after `delay` seconds.",
        "arguments": [
            {"argument_name": "value", "argument_description": "any JSON value", "type": "json"},
            {"argument_name": "delay", "argument_description": "seconds to wait before answering", "type": "float"},
        ],
    }

    response = await add_task(alice, service_id, [{"hello": ["world", 1]}, 0])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] == {"value": {"hello": ["world", 1]}, "instance": worker.url.removeprefix("http://")}
    assert body["state"] == "answered" and body["instance_id"] == worker.instance_id and body["attempts"] == 1
    task = (await alice.get(f"/task_info/{body['task_id']}")).json()  # read-your-writes: no "pending"
    assert task["state"] == "answered" and task["answer"] == body["answer"] and task["finished_at"] is not None

    again = await workers.admin.post("/services", json={"url": worker.url + "/"})  # the same URL: no new instance
    assert again.status_code == 200 and again.json()["instance_id"] == worker.instance_id


async def test_image_transform_service(workers: Workers, alice: httpx.AsyncClient) -> None:
    worker = await workers.start("workers.image_transform_service")
    service_id = (await workers.register(worker))["service_id"]
    info = (await alice.get(f"/service_info/{service_id}")).json()
    assert info["service_name"] == "image_transform_service"
    assert [a["type"] for a in info["arguments"]] == ["image", "str", "json"]

    picture = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 30, 30)).save(picture, format="JPEG")
    data = base64.b64encode(picture.getvalue()).decode()

    def decoded(response: httpx.Response) -> Image.Image:
        assert response.status_code == 200, response.text
        return Image.open(io.BytesIO(base64.b64decode(response.json()["answer"]["image"])))

    resized = decoded(await add_task(alice, service_id, [data, "resize", {"width": 10, "height": 5}]))
    assert resized.size == (10, 5)
    gray = decoded(await add_task(alice, service_id, [data, "grayscale", {}]))
    assert gray.mode == "L" and gray.size == (40, 20)
    uploaded = (await alice.post("/api/files", content=picture.getvalue(), params={"name": "p.jpg"})).json()["file_id"]
    rotated = decoded(await add_task(alice, service_id, [uploaded, "rotate", {"angle": 90}]))  # a file id
    assert rotated.size == (20, 40)

    refused = await add_task(alice, service_id, [data, "blur", {}])
    assert refused.status_code == 422, refused.text
    assert refused.json()["failure"] == "rejected" and "operation must be one of" in refused.json()["error"]
    not_image = await add_task(alice, service_id, [base64.b64encode(b"hello").decode(), "grayscale", {}])
    assert not_image.status_code == 400 and not_image.json()["argument"] == "image"


# --- load balancing and failures --------------------------------------------------------------------


async def run_many(client: httpx.AsyncClient, service_id: int, n: int, concurrency: int, delay: float = 0.01,
                   done: list[httpx.Response] | None = None,
                   args: Callable[[int], list[Any]] | None = None) -> list[httpx.Response]:
    """Tasks 0..n-1 over `concurrency` connections (echo arguments unless `args`); `done` fills up as they end."""
    todo = iter(range(n))
    done = [] if done is None else done

    async def loop() -> None:
        for i in todo:
            done.append(await add_task(client, service_id, args(i) if args else [i, delay]))

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done


def tiny_png() -> str:
    picture = io.BytesIO()
    Image.new("RGB", (16, 8), (10, 200, 30)).save(picture, format="PNG")
    return base64.b64encode(picture.getvalue()).decode()


async def test_two_image_instances_share_the_load_and_a_killed_one_loses_nothing(
        workers: Workers, alice: httpx.AsyncClient) -> None:
    first = await workers.start("workers.image_transform_service")
    second = await workers.start("workers.image_transform_service")
    service_id = (await workers.register(first))["service_id"]
    assert (await workers.register(second))["service_id"] == service_id
    png = tiny_png()

    def resize(i: int) -> list[Any]:
        return [png, "resize", {"width": 1 + i % 40, "height": 4}]

    def widths(responses: list[httpx.Response]) -> list[int]:
        bad = [r.text[:200] for r in responses if r.status_code != 200]
        assert not bad, bad[:3]
        return sorted(r.json()["answer"]["width"] for r in responses)

    responses = await run_many(alice, service_id, 200, concurrency=16, args=resize)
    assert widths(responses) == sorted(1 + i % 40 for i in range(200))
    shares = Counter(r.json()["instance_id"] for r in responses)
    assert set(shares) == {first.instance_id, second.instance_id}  # both served
    assert max(shares.values()) / min(shares.values()) <= 1.5, shares

    answered: list[httpx.Response] = []
    load = asyncio.ensure_future(run_many(alice, service_id, 200, concurrency=16, done=answered, args=resize))

    async def under_way() -> bool:
        return load.done() or len(answered) >= 40

    await eventually(under_way, timeout=60, what="the load to be under way")
    assert not load.done()
    workers.kill(second)  # SIGKILL mid-load: its in-flight tasks are retried on the first
    responses = await load
    assert widths(responses) == sorted(1 + i % 40 for i in range(200))  # every task answered, correctly

    async def marked_down() -> bool:
        rows = (await workers.admin.get("/services")).json()["instances"]
        return any(r["instance_id"] == second.instance_id and r["state"] == "down" for r in rows)

    await eventually(marked_down, timeout=30, what="the killed instance to be marked down")


async def test_an_instance_that_errors_gets_its_tasks_retried_elsewhere(
        workers: Workers, alice: httpx.AsyncClient) -> None:
    name = unique()
    failing, healthy = await workers.echo(name, "--fail"), await workers.echo(name)
    service_id = (await workers.register(failing))["service_id"]
    await workers.register(healthy)
    responses = await run_many(alice, service_id, 20, concurrency=4)
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:3]
    assert {r.json()["instance_id"] for r in responses} == {healthy.instance_id}

    only_failing = await workers.echo(unique(), "--fail")
    lonely_id = (await workers.register(only_failing))["service_id"]
    response = await add_task(alice, lonely_id, [1, 0])
    assert response.status_code == 502, response.text
    body = response.json()
    assert body["failure"] == "exhausted" and body["attempts"] == 3 and "fails every task" in body["error"]
    info = (await alice.get(f"/task_info/{body['task_id']}")).json()
    assert info["state"] == "failed" and info["failure"] == "exhausted"


async def test_no_healthy_instance_answers_503(workers: Workers, alice: httpx.AsyncClient) -> None:
    worker = await workers.echo(unique())
    service_id = (await workers.register(worker))["service_id"]
    workers.kill(worker)

    async def down() -> bool:
        rows = (await workers.admin.get("/services")).json()["instances"]
        return any(r["instance_id"] == worker.instance_id and r["state"] == "down" for r in rows)

    await eventually(down, timeout=30, what="the instance to be marked down")
    response = await add_task(alice, service_id, [1, 0])
    assert response.status_code == 503 and "no healthy instance" in response.json()["error"]
    assert response.headers["retry-after"] == "1"


async def test_wait_false_timeout_and_polling(workers: Workers, alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    worker = await workers.echo(unique())
    service_id = (await workers.register(worker))["service_id"]
    accepted = await add_task(alice, service_id, ["later", 1.0], wait="false")
    assert accepted.status_code == 202 and accepted.json()["state"] == "pending"
    task_id = accepted.json()["task_id"]
    assert accepted.headers["location"] == f"/task_info/{task_id}"
    pending = (await alice.get(f"/task_info/{task_id}")).json()  # never 404 right after add_task
    assert pending["state"] in ("pending", "answered")
    assert (await bob.get(f"/task_info/{task_id}")).status_code == 403
    assert (await task_state(alice, task_id, "answered"))["answer"]["value"] == "later"

    slow = await add_task(alice, service_id, ["slow", 2.0], timeout="0.3")
    assert slow.status_code == 504, slow.text
    late = await task_state(alice, slow.json()["task_id"], "answered")
    assert late["answer"]["value"] == "slow"


async def test_a_full_queue_answers_429(workers: Workers, alice: httpx.AsyncClient) -> None:
    worker = await workers.echo(unique(), "--max-concurrency", "1")
    service_id = (await workers.register(worker))["service_id"]
    statuses: Counter[int] = Counter()
    for i in range(45):  # the test stack's queue holds 40 outstanding tasks per service
        statuses[(await add_task(alice, service_id, [i, 0.5], wait="false")).status_code] += 1
    assert statuses[202] >= 40 and statuses[429] >= 1, statuses
    response = await add_task(alice, service_id, [0, 0], wait="false")
    assert response.status_code == 429 and response.headers["retry-after"] == "1"


async def test_errors_in_the_job_apis_envelope(workers: Workers, alice: httpx.AsyncClient, stack: Stack) -> None:
    assert (await alice.get("/service_info/abc")).status_code == 400
    assert (await alice.get("/service_info/-1")).status_code == 400
    assert (await alice.get("/service_info/2147483648")).status_code == 404
    assert (await alice.get("/service_info/999999")).json() == {"error": "no service 999999"}
    assert (await add_task(alice, 999999, [])).status_code == 404
    assert (await alice.post("/add_task", json={"service_id": "0", "args": []})).status_code == 400
    assert (await alice.post("/add_task", json={"service_id": 0})).status_code == 400
    assert (await alice.get(f"/task_info/{uuid.uuid4()}")).status_code == 404
    assert (await alice.get("/task_info/nope")).status_code == 400
    async with stack.client(user="") as anonymous:
        assert (await anonymous.get("/services_list")).status_code == 401

    worker = await workers.echo(unique())
    assert (await alice.post("/services", json={"url": worker.url})).status_code == 403
    assert (await alice.get("/services")).status_code == 403
    service_id = (await workers.register(worker))["service_id"]
    mismatch = await add_task(alice, service_id, [1, "soon"])
    assert mismatch.status_code == 400
    assert mismatch.json() == {"error": "argument 1 ('delay') must be a number, got a string", "argument": "delay"}
    count = await add_task(alice, service_id, [1])
    assert count.status_code == 400 and "expected 2 argument(s) (value, delay), got 1" in count.json()["error"]

    admin = workers.admin
    unreachable = await admin.post("/services", json={"url": f"http://127.0.0.1:{free_port()}"})
    assert unreachable.status_code == 400 and "could not read the instance's /me" in unreachable.json()["error"]
    not_a_service = await admin.post("/services", json={"url": stack.url})  # the API has no /me
    assert not_a_service.status_code == 400
    outside = await admin.post("/services", json={"url": "http://192.0.2.1:80"})
    assert outside.status_code == 400 and "allowed hosts" in outside.json()["error"]
    assert (await admin.delete(f"/services/{uuid.uuid4()}")).status_code == 404


async def test_removing_the_last_instance_removes_the_service(workers: Workers, alice: httpx.AsyncClient) -> None:
    name = unique()
    worker = await workers.echo(name)
    service_id = (await workers.register(worker))["service_id"]
    removed = await workers.admin.delete(f"/services/{worker.instance_id}")
    assert removed.status_code == 200 and removed.json() == {"instance_id": worker.instance_id, "state": "removed"}
    worker.instance_id = ""
    assert {"service_id": service_id, "service_name": name} not in (await alice.get("/services_list")).json()
    assert (await alice.get(f"/service_info/{service_id}")).status_code == 404
    assert (await add_task(alice, service_id, [1, 0])).status_code == 404

    again = await workers.register(worker)  # the name keeps its id
    assert again["service_id"] == service_id and again["instance_id"] != removed.json()["instance_id"]


async def test_router_killed_and_restarted_loses_no_accepted_task(
        workers: Workers, alice: httpx.AsyncClient, stack: Stack) -> None:
    name = unique()
    first, second = await workers.echo(name), await workers.echo(name)
    service_id = (await workers.register(first))["service_id"]
    await workers.register(second)
    task_ids = []
    for i in range(30):
        response = await add_task(alice, service_id, [i, 0.3], wait="false")
        assert response.status_code == 202, response.text
        task_ids.append(response.json()["task_id"])
    stack.supervisor.kill("router")  # SIGKILL; the supervisor starts a new one a second later
    for i in range(30, 40):  # accepted while no router runs
        response = await add_task(alice, service_id, [i, 0], wait="false")
        assert response.status_code == 202, response.text
        task_ids.append(response.json()["task_id"])
    values = []
    for task_id in task_ids:
        info = await task_state(alice, task_id, "answered", "failed", timeout=120)
        assert info["state"] == "answered", info
        values.append(info["answer"]["value"])
    assert sorted(values) == list(range(40))


async def test_large_arguments_and_answers_go_through_the_blob_store(
        workers: Workers, alice: httpx.AsyncClient) -> None:
    echo_id = (await workers.register(await workers.echo(unique())))["service_id"]
    big = "x" * 300_000  # over the 256 KiB inline limit once answered
    response = await add_task(alice, echo_id, [big, 0])
    assert response.status_code == 200, response.text[:300]
    assert response.json()["answer"]["value"] == big
    info = (await alice.get(f"/task_info/{response.json()['task_id']}")).json()
    assert info["answer_file_id"] is not None and info["answer"]["value"] == big
    stored = await alice.get(f"/api/files/{info['answer_file_id']}")  # the caller owns the stored answer
    assert stored.status_code == 200 and stored.json()["value"] == big

    images_id = (await workers.register(await workers.start("workers.image_transform_service")))["service_id"]
    noise = Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3))
    picture = io.BytesIO()
    noise.save(picture, format="PNG")  # ~480 KB: stored as a file, sent to the instance as base64
    assert len(picture.getvalue()) > 256 * 1024
    resized = await add_task(alice, images_id, [base64.b64encode(picture.getvalue()).decode(), "resize",
                                                {"width": 200, "height": 100}])
    assert resized.status_code == 200, resized.text[:300]
    assert Image.open(io.BytesIO(base64.b64decode(resized.json()["answer"]["image"]))).size == (200, 100)
