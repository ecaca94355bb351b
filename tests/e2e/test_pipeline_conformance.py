"""The conformance cases of tests/unit/test_pipeline_conformance.py through the whole stack: each spec
is PUT through the API, called at /p/{name}, run by the `skyjobs pipelines` workers over Kafka.

The fixture services (echo, status, slow, ...) run in this process; a case's site-relative URLs to
them are made absolute, while /json, /templates, /transform and /lib stay skyjobs's own built-ins.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.unit.pipeline_services import Recorder, fixture_app, serving
from tests.unit.test_pipeline_conformance import CASES, Case

_FIXTURE_PATHS = re.compile(r"(^|\s)(/(?:echo|status|slow|text|sendemail|double)\b)")


class Services:
    def __init__(self, url: str, recorder: Recorder) -> None:
        self.url = url
        self.recorder = recorder


@pytest.fixture(scope="module")
async def services() -> AsyncIterator[Services]:
    recorder = Recorder()
    async with serving(fixture_app(recorder)) as url:
        yield Services(url, recorder)


def absolute(spec: Any, base: str) -> Any:
    """The spec with the fixture services' site-relative URLs made absolute."""
    if isinstance(spec, str):
        return _FIXTURE_PATHS.sub(lambda m: m.group(1) + base + m.group(2), spec)
    if isinstance(spec, list):
        return [absolute(s, base) for s in spec]
    return spec


async def put_docs(client: httpx.AsyncClient, docs: dict[str, Any]) -> None:
    for key, value in docs.items():
        body = value if isinstance(value, bytes) else orjson.dumps(value)
        response = await client.put(f"/{key}", content=body)
        assert response.status_code in (200, 201, 204), response.text


async def call(client: httpx.AsyncClient, services: Services, case: Case, name: str) -> httpx.Response:
    saved = await client.put(f"/api/pipelines/{name}", json=absolute(case.spec, services.url))
    assert saved.status_code in (200, 201), saved.text
    await put_docs(client, case.docs)
    body = None if case.body is None else case.body if isinstance(case.body, bytes) else orjson.dumps(case.body)
    headers = {"content-type": "application/json"} if case.body is not None else {}
    return await client.request(case.method, f"/p/{name}{case.path}", params=list(case.query), content=body,
                                headers=headers)


@pytest.mark.parametrize("case_name", list(CASES))
async def test_case_on_kafka(alice: httpx.AsyncClient, services: Services, case_name: str) -> None:
    case = CASES[case_name]
    name = f"conf-{uuid.uuid4().hex[:10]}"
    response = await call(alice, services, case, name)
    assert response.status_code == case.status, (response.status_code, response.text[:500])
    if case.json is not None:
        expected = orjson.loads(orjson.dumps(case.json).replace(b"p/test", f"p/{name}".encode()))
        got = response.json()
        if isinstance(got, dict) and "auth" in got:  # the echo of a call to the fixture: no Authorization
            assert got["auth"] is None
        assert got == expected
    if case.contains is not None:
        assert case.contains in response.text, response.text[:500]


async def test_seed_write_hook_on_kafka(alice: httpx.AsyncClient, services: Services) -> None:
    tag = uuid.uuid4().hex[:8]
    services.recorder.calls.clear()
    name = f"hook-{tag}"
    await alice.put(f"/api/pipelines/{name}", json=absolute(["POST /json/records/$*", "/sendemail"], services.url))
    response = await alice.post(f"/p/{name}/{tag}/x", json={"r": 1})
    assert response.status_code == 200 and response.json() == {"sent": True}
    assert (await alice.get(f"/json/records/{tag}/x")).json() == {"r": 1}
    assert [c["path"] for c in services.recorder.calls] == ["/sendemail"]
    services.recorder.calls.clear()
    failed = await alice.post(f"/p/{name}/{tag}/y", content=b"not json")
    assert failed.status_code == 400 and services.recorder.calls == []


async def test_parallel_branches_and_the_step_after_them(alice: httpx.AsyncClient, services: Services) -> None:
    name = f"par-{uuid.uuid4().hex[:8]}"
    await alice.put(f"/api/pipelines/{name}", json=absolute([["GET /slow/100"] * 10, "jsonObject"], services.url))
    await alice.get(f"/p/{name}")  # warm
    started = time.perf_counter()
    response = await alice.get(f"/p/{name}")
    assert response.status_code == 200 and len(response.json()) == 11
    assert time.perf_counter() - started < 0.6
    services.recorder.calls.clear()
    name = f"after-{uuid.uuid4().hex[:8]}"
    await alice.put(f"/api/pipelines/{name}",
                    json=absolute([["GET /slow/20", "GET /slow/700"], "GET /echo/after"], services.url))
    started = time.perf_counter()
    response = await alice.get(f"/p/{name}")
    assert response.status_code == 200 and time.perf_counter() - started >= 0.7
    afters = [c for c in services.recorder.calls if c["path"] == "/echo/after"]
    assert len(afters) == 2
    # the step after the fast branch ran long before the slow branch answered
    run = (await alice.get(f"/api/pipeline_runs/{response.headers['x-skyjobs-pipeline-run']}")).json()
    times = sorted((s["started_at"], s["url"]) for s in run["steps"])
    assert [u.rsplit("/", 2)[-2:] for _, u in times][:2] in ([["slow", "20"], ["slow", "700"]],
                                                            [["slow", "700"], ["slow", "20"]])
    assert times[2][1].endswith("/echo/after")


async def test_a_run_started_without_waiting_can_be_waited_for(alice: httpx.AsyncClient, services: Services) -> None:
    name = f"slow-{uuid.uuid4().hex[:8]}"
    assert (await alice.put(f"/api/pipelines/{name}", json=absolute(["GET /slow/1500"], services.url))).status_code == 201
    accepted = await alice.post(f"/p/{name}?wait=false")
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["run_id"]
    run = (await alice.get(f"/api/pipeline_runs/{run_id}", params={"wait": 30})).json()
    assert run["state"] == "succeeded" and run["steps"][0]["status"] == 200, run  # one call: it waited for the end
    bad = await alice.get(f"/api/pipeline_runs/{run_id}", params={"wait": "61"})
    assert bad.status_code == 400 and "wait must be" in bad.json()["error"]

