"""The pipelines API end to end: store, call (seed examples on the built-in services), runs, errors."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import eventually


async def test_store_validate_call_and_delete(alice: httpx.AsyncClient) -> None:
    name = f"fetch-{uuid.uuid4().hex[:8]}"
    bad = await alice.put(f"/api/pipelines/{name}", json=["GET /json/a", ["paralel"]])
    assert bad.status_code == 400 and bad.json()["path"] == "$[1][0]" and "paralel" in bad.json()["error"]
    nul = await alice.put(f"/api/pipelines/{name}", json=["GET /json/a\x00b"])
    assert nul.status_code == 400 and "NUL" in nul.json()["error"]
    spec = ["GET /json/order-items/$>0",
            ["~$this", "GET /json/orders/${orderId} ~order", "GET /json/users/${userId} ~user"], "jsonObject"]
    assert (await alice.put(f"/api/pipelines/{name}", json=spec)).status_code == 201
    tag = uuid.uuid4().hex[:8]
    assert (await alice.put(f"/json/order-items/{tag}", json={"orderId": tag, "userId": "u" + tag})).status_code == 201
    await alice.put(f"/json/orders/{tag}", json={"total": 3})
    await alice.put(f"/json/users/u{tag}", json={"name": "Ann"})
    response = await alice.get(f"/p/{name}/{tag}/rest")
    assert response.status_code == 200, response.text
    assert response.json() == {"orderId": tag, "userId": "u" + tag, "order": {"total": 3}, "user": {"name": "Ann"}}
    run = (await alice.get(f"/api/pipeline_runs/{response.headers['x-skyjobs-pipeline-run']}")).json()
    assert run["state"] == "succeeded" and len(run["steps"]) == 3 and run["steps"][0]["status"] == 200
    assert (await alice.options(f"/p/{name}")).status_code == 204
    assert name in [p["name"] for p in (await alice.get("/api/pipelines")).json()["pipelines"]]
    assert (await alice.delete(f"/api/pipelines/{name}")).status_code == 200
    assert (await alice.get(f"/p/{name}")).status_code == 404


async def test_template_and_wait_false(alice: httpx.AsyncClient) -> None:
    tag = uuid.uuid4().hex[:8]
    await alice.put(f"/json/page-{tag}.json", json={"title": "Hello"})
    assert (await alice.put(f"/templates/page-{tag}.html", content=b"<h1>{{ title }}</h1>")).status_code == 201
    name = f"page-{tag}"
    await alice.put(f"/api/pipelines/{name}", json=[f"GET /json/page-{tag}.json", f"/templates/page-{tag}.html"])
    page = await alice.get(f"/p/{name}")
    assert page.status_code == 200 and page.text == "<h1>Hello</h1>" and page.headers["content-type"].startswith("text/html")
    accepted = await alice.post(f"/p/{name}?wait=false")
    assert accepted.status_code == 202
    run_id = accepted.json()["run_id"]

    async def finished() -> dict[str, object] | None:
        body = (await alice.get(f"/api/pipeline_runs/{run_id}")).json()
        return body if body["state"] != "running" else None

    assert (await eventually(finished, timeout=20))["state"] == "succeeded"


async def test_step_latency_in_metrics(alice: httpx.AsyncClient, admin: httpx.AsyncClient) -> None:
    name = f"metrics-{uuid.uuid4().hex[:8]}"
    assert (await alice.put(f"/api/pipelines/{name}", json=["GET /lib/bypass", "POST /lib/bypass"])).status_code == 201
    assert (await alice.post(f"/p/{name}", json={"a": 1})).status_code == 200

    async def exported() -> str | None:
        text = (await admin.get("/metrics")).text
        wanted = ('skyjobs_pipeline_step_latency_seconds{method="GET",quantile="0.99"}',
                  'skyjobs_pipeline_step_latency_seconds{method="POST",quantile="0.5"}',
                  "skyjobs_pipeline_run_latency_seconds{", 'skyjobs_pipeline_runs{state="succeeded"}')
        return text if all(w in text for w in wanted) else None

    await eventually(exported, timeout=20, what="pipeline step latency in /metrics")


async def test_large_bodies_travel_by_reference(alice: httpx.AsyncClient, admin: httpx.AsyncClient) -> None:
    """Over the inline limit (64 KiB) a body goes through the blob store with a file.stored event."""
    name = f"big-{uuid.uuid4().hex[:8]}"
    spec = ["POST /lib/bypass", ["POST /lib/bypass ~a", "POST /lib/bypass ~b"], "jsonObject"]
    assert (await alice.put(f"/api/pipelines/{name}", json=spec)).status_code == 201
    body = {"blob": "x" * 200_000}
    response = await alice.post(f"/p/{name}", json=body)
    assert response.status_code == 200, response.text[:300]
    assert response.json() == {"a": body, "b": body}
    run_id = response.headers["x-skyjobs-pipeline-run"]

    async def stored() -> list[dict[str, object]] | None:
        found = (await admin.get("/api/history", params={"type": "file.stored.v1",
                                                         "correlation_id": f"pipeline-run-{run_id}"})).json()
        return found["events"] or None

    files = await eventually(stored, timeout=20, what="the run's bodies stored as files")
    assert all(e["data"]["size"] > 64 * 1024 for e in files)
