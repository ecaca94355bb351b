"""Pipelines on two workers, and a worker SIGKILLed mid-run (run after the other e2e tests: it adds a
second `skyjobs pipelines` process to the session's stack and kills workers).

A run's branches spread over the partitions of skyjobs.pipeline-work, so with two workers one run's
steps are sent by both. A worker killed while a step waits for its answer leaves the token
unacknowledged: the partition's next owner runs it again. A GET (or a `!retry` step) is sent again
and the run succeeds; a POST may have been sent already, so the run fails with the reason instead.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import Stack, eventually
from tests.e2e.test_pipeline_conformance import Services, absolute
from tests.unit.pipeline_services import Recorder, fixture_app, serving


@pytest.fixture(scope="module")
async def services() -> AsyncIterator[Services]:
    recorder = Recorder()
    async with serving(fixture_app(recorder)) as url:
        yield Services(url, recorder)


@pytest.fixture(scope="module")
async def two_workers(stack: Stack) -> AsyncIterator[list[str]]:
    await stack.supervisor.start("pipelines2", [sys.executable, "-m", "services.cli", "pipelines"], stack.env)
    yield ["pipelines", "pipelines2"]


def worker_pids(run: dict[str, Any]) -> set[int]:
    return {int(s["worker"].rsplit("-", 1)[1]) for s in run["steps"] if s["worker"]}


def child_named(stack: Stack, pid: int) -> str:
    for name, child in stack.supervisor.children.items():
        if child.process is not None and child.process.pid == pid:
            return name
    raise AssertionError(f"no supervised process with pid {pid}")


async def test_one_runs_branches_execute_on_both_workers(stack: Stack, alice: httpx.AsyncClient,
                                                         services: Services, two_workers: list[str]) -> None:
    name = f"wide-{uuid.uuid4().hex[:8]}"
    spec = absolute([["GET /echo/b"] * 16, "jsonObject"], services.url)
    assert (await alice.put(f"/api/pipelines/{name}", json=spec)).status_code == 201

    async def on_both() -> dict[str, Any] | None:
        response = await alice.get(f"/p/{name}")
        assert response.status_code == 200, response.text
        assert response.json()["length"] == 16
        run = (await alice.get(f"/api/pipeline_runs/{response.headers['x-skyjobs-pipeline-run']}")).json()
        return run if len(worker_pids(run)) == 2 else None

    # the second worker joins the group within seconds; from then on the branches spread
    run = await eventually(on_both, timeout=120, interval=0.5, what="a run whose branches ran on two workers")
    pids = {c.process.pid for n, c in stack.supervisor.children.items() if n in two_workers and c.process}
    assert worker_pids(run) == pids
    assert run["state"] == "succeeded" and len(run["steps"]) == 16 and run["fanouts"] == 1 and run["joins"] == 1


@pytest.mark.parametrize("step, outcome", [("GET /slow/4000", "succeeded"),
                                           ("POST /slow/4000 !retry", "succeeded"),
                                           ("POST /slow/4000", "failed")])
async def test_a_worker_killed_mid_run(stack: Stack, alice: httpx.AsyncClient, admin: httpx.AsyncClient,
                                       services: Services, two_workers: list[str], step: str, outcome: str) -> None:
    name = f"kill-{uuid.uuid4().hex[:8]}"
    spec = absolute([step, "GET /echo/after", {"done": "path"}], services.url)
    assert (await alice.put(f"/api/pipelines/{name}", json=spec)).status_code == 201
    accepted = await alice.post(f"/p/{name}?wait=false", json={"x": 1})
    assert accepted.status_code == 202
    run_id = accepted.json()["run_id"]

    async def in_flight() -> dict[str, Any] | None:
        run = (await alice.get(f"/api/pipeline_runs/{run_id}")).json()
        steps = run.get("steps") or []
        return run if steps and steps[0]["worker"] and steps[0]["status"] is None else None

    run = await eventually(in_flight, timeout=30, what="the slow step in flight")
    victim = child_named(stack, next(iter(worker_pids(run))))
    stack.supervisor.kill(victim)  # SIGKILL mid-step; the supervisor restarts it a second later

    async def ended() -> dict[str, Any] | None:
        body = (await alice.get(f"/api/pipeline_runs/{run_id}")).json()
        return body if body["state"] != "running" else None

    final = await eventually(ended, timeout=90, interval=0.3, what="the run to end after its worker was killed")
    assert final["state"] == outcome, final
    history = (await admin.get(f"/api/history/pipeline/{run_id}")).json()
    sent = [e for e in history["events"] if e["type"] == "pipeline.step-requested.v1" and "/slow/" in e["data"]["url"]]
    if outcome == "succeeded":
        assert final["status"] == 200 and len(sent) == 2 and sent[0]["actor"] != sent[1]["actor"], sent
        assert any(s["url"].endswith("/echo/after") and s["status"] == 200 for s in final["steps"])
    else:
        assert final["status"] == 502 and "not sent again" in final["error"] and "POST" in final["error"], final
        assert len(sent) == 1  # never repeated


async def test_kafka_away_while_branches_wait_loses_nothing(stack: Stack, alice: httpx.AsyncClient,
                                                           services: Services, two_workers: list[str]) -> None:
    """Kafka stops while a run's branches wait for their answers and comes back: the answers, the
    join and the end reach Kafka once it is there, and the run ends as it would have."""
    if stack.infra.kafka is None:
        pytest.skip("Kafka is not a local process of this session (external or container)")
    name = f"outage-{uuid.uuid4().hex[:8]}"
    spec = absolute([["GET /slow/2000"] * 4, "jsonObject"], services.url)
    assert (await alice.put(f"/api/pipelines/{name}", json=spec)).status_code == 201
    answered = services.recorder.slow_answers
    accepted = await alice.post(f"/p/{name}?wait=false")
    assert accepted.status_code == 202
    run_id = accepted.json()["run_id"]

    async def all_in_flight() -> bool:
        steps = (await alice.get(f"/api/pipeline_runs/{run_id}")).json().get("steps") or []
        return len(steps) == 4 and all(s["worker"] and s["status"] is None for s in steps)

    await eventually(all_in_flight, timeout=30, what="the four branches waiting for their answers")
    stack.infra.kafka.stop()
    try:
        async def all_answered() -> bool:  # every answer comes while Kafka is away
            return services.recorder.slow_answers >= answered + 4

        await eventually(all_answered, timeout=30, what="the four answers given while Kafka is stopped")
    finally:
        stack.infra.kafka.start()
        await stack.infra.kafka.wait_ready()

    async def ended() -> dict[str, Any] | None:
        body = (await alice.get(f"/api/pipeline_runs/{run_id}")).json()
        return body if body["state"] != "running" else None

    final = await eventually(ended, timeout=150, interval=0.5, what="the run to end after Kafka came back")
    assert final["state"] == "succeeded" and final["status"] == 200, final
    assert len(final["steps"]) == 4 and all(s["status"] == 200 for s in final["steps"]) and final["joins"] == 1
