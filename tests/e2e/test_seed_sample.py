"""Seed 001's own sample calls, as written (form content type, trailing comma), with a token."""

from __future__ import annotations

import httpx

from tests.conftest import wait_state


async def test_sample_run_then_job_info(admin: httpx.AsyncClient) -> None:
    response = await admin.post(
        "/api/job/run",
        content='{\n    "command": "uname -a | wc -l",\n}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    first = await admin.get(f"/api/job/job_info/{job_id}")
    assert first.status_code == 200  # read-your-writes: never 404 right after run
    assert first.json()["state"] in ("queued", "running", "succeeded")
    info = await wait_state(admin, job_id, "succeeded", "failed")
    assert info["state"] == "succeeded", info
    assert info["exit_code"] == 0
    answer = await admin.get(f"/api/files/{info['answer_id']}")
    assert answer.status_code == 200
    assert answer.text.strip() == "1"
    listed = (await admin.get("/api/list_jobs")).json()["job_ids"]
    assert job_id in listed
