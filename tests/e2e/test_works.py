"""Works and tasks (seed 003) end to end: the envelope, the scheduler firing on real Kafka, history."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from tests.conftest import eventually

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def work_body(**changes: object) -> dict[str, object]:
    return {"user_id": "alice", "name": f"work-{uuid.uuid4().hex[:8]}", "description": "a test work",
            "type": "BATCH", "category": "SHELL", "command": "echo tick", "run_frequency": None} | changes


async def create(client: httpx.AsyncClient, **changes: object) -> dict[str, object]:
    response = await client.post("/api/v1/works", json=work_body(**changes))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["code"] == 0
    return dict(body["data"])


async def test_create_get_patch_delete_in_the_seed_envelope(alice: httpx.AsyncClient) -> None:
    work = await create(alice)
    assert HEX32.match(str(work["work_id"])) and TS.match(str(work["created_at"]))
    for field in ("lambda_id", "work_directory", "main_class_name", "java_version", "run_frequency", "deleted_at"):
        assert field in work and work[field] is None  # every field present, null when empty
    assert work["status"] == 1 and work["extra_params"] == []
    got = (await alice.get(f"/api/v1/works/{work['work_id']}")).json()
    assert got == {"code": 0, "data": work}
    patched = (await alice.patch(f"/api/v1/works/{work['work_id']}",
                                 content='{"name": "renamed", "extra_params": ["-Doptions fdfdf", ],}')).json()
    assert patched["code"] == 0 and patched["data"]["name"] == "renamed"
    assert patched["data"]["extra_params"] == ["-Doptions fdfdf"] and patched["data"]["description"] == "a test work"
    assert (await alice.delete(f"/api/v1/works/{work['work_id']}")).json() == {"code": 0}
    gone = await alice.get(f"/api/v1/works/{work['work_id']}")
    assert gone.status_code == 410 and gone.json()["code"] == 410100 and "deleted" in gone.json()["msg"]
    listed = (await alice.get("/api/v1/works", params={"name": "renamed", "limit": 100})).json()["data"]
    assert work["work_id"] not in [w["work_id"] for w in listed]


async def test_a_cron_work_fires_tasks_that_run_as_jobs(alice: httpx.AsyncClient) -> None:
    work = await create(alice, run_frequency="* * * * * */2", overlap="allow", command="echo tick")
    work_id = work["work_id"]
    assert TS.match(str(work["next_run_at"]))

    async def two_done() -> list[dict[str, object]] | None:
        tasks = (await alice.get(f"/api/v1/works/{work_id}/tasks")).json()["data"]
        done = [t for t in tasks if t["status"] == 0]
        return done if len(done) >= 2 else None

    done = await eventually(two_done, timeout=60, interval=0.5, what="two scheduled tasks succeeded")
    task = done[0]
    assert HEX32.match(str(task["task_id"])) and TS.match(str(task["started_at"])) and TS.match(str(task["ended_at"]))
    assert set(task) == {"task_id", "work_id", "status", "started_at", "ended_at", "run_time"}
    assert task["run_time"] == 0  # `echo` takes well under a second
    detail = (await alice.get(f"/api/v1/works/{work_id}/tasks/{task['task_id']}")).json()["data"]
    assert detail["state"] == "succeeded" and detail["reason"] in ("schedule", "catch-up")
    assert detail["job_id"].replace("-", "") == task["task_id"] and detail["exit_code"] == 0
    assert (await alice.get(str(detail["output_url"]))).text == "tick\n"
    job = (await alice.get(f"/api/job/job_info/{detail['job_id']}")).json()
    assert job["state"] == "succeeded"
    # pause: no task is scheduled after the pause is visible
    paused = (await alice.patch(f"/api/v1/works/{work_id}", json={"status": 2})).json()["data"]
    assert paused["status"] == 2 and paused["next_run_at"] is None
    count = len((await alice.get(f"/api/v1/works/{work_id}/tasks", params={"limit": 1000})).json()["data"])
    manual = await alice.post(f"/api/v1/works/{work_id}/tasks")
    assert manual.status_code == 201 and manual.json()["code"] == 0
    manual_id = manual.json()["data"]["task_id"]

    async def manual_done() -> bool:
        info = (await alice.get(f"/api/v1/works/{work_id}/tasks/{manual_id}")).json()["data"]
        return bool(info["status"] == 0 and info["reason"] == "manual")

    await eventually(manual_done, timeout=30, what="the manual run succeeded")
    after = (await alice.get(f"/api/v1/works/{work_id}/tasks", params={"limit": 1000})).json()["data"]
    assert len(after) == count + 1  # only the manual run: the paused schedule fired nothing


async def test_overlap_skip_records_skipped_tasks(alice: httpx.AsyncClient) -> None:
    work = await create(alice, run_frequency="* * * * * */1", command="sleep 4")
    work_id = work["work_id"]

    async def skipped() -> bool:
        tasks = (await alice.get(f"/api/v1/works/{work_id}/tasks", params={"limit": 100})).json()["data"]
        return any(t["status"] == 6 for t in tasks) and any(t["status"] == 3 for t in tasks)

    await eventually(skipped, timeout=30, interval=0.3, what="a skipped task while one runs")
    tasks = (await alice.get(f"/api/v1/works/{work_id}/tasks", params={"limit": 100})).json()["data"]
    assert sum(1 for t in tasks if t["status"] == 3) == 1  # never two running at once under "skip"
    await alice.delete(f"/api/v1/works/{work_id}")


async def test_list_search_order_and_paging(alice: httpx.AsyncClient, bob: httpx.AsyncClient,
                                            admin: httpx.AsyncClient) -> None:
    tag = uuid.uuid4().hex[:8]
    names = [f"Zeta {tag}", f"alpha {tag}", f"Mid {tag}"]
    made = [await create(alice, name=n, description=f"nightly ETL {tag.upper()}") for n in names]
    found = (await alice.get("/api/v1/works/search", params={"name": tag.upper(), "order": "name"})).json()["data"]
    assert [w["name"] for w in found] == sorted(names)
    by_desc = (await alice.get("/api/v1/works/search", params={"q": f"etl {tag}"})).json()["data"]
    assert {w["work_id"] for w in by_desc} == {w["work_id"] for w in made}
    newest = (await alice.get("/api/v1/works/search", params={"q": tag, "order": "-created_at", "limit": 2})).json()
    assert [w["work_id"] for w in newest["data"]] == [made[2]["work_id"], made[1]["work_id"]]
    page2 = (await alice.get("/api/v1/works/search", params={"q": tag, "order": "-created_at", "limit": 2,
                                                              "offset": 1})).json()["data"]
    assert [w["work_id"] for w in page2] == [made[0]["work_id"]]
    exact = (await alice.get("/api/v1/works", params={"name": names[0]})).json()["data"]
    assert [w["work_id"] for w in exact] == [made[0]["work_id"]]
    assert (await bob.get("/api/v1/works/search", params={"q": tag})).json()["data"] == []
    assert (await bob.get(f"/api/v1/works/{made[0]['work_id']}")).json()["code"] == 403100
    assert len((await admin.get("/api/v1/works/search", params={"q": tag})).json()["data"]) == 3


@pytest.mark.parametrize(("body", "code", "fragment"), [
    ({"name": "x"}, 400100, "is required"),
    (work_body(type="STREAM"), 400100, "type must be"),
    (work_body(category="SPARK"), 400100, "category must be"),
    (work_body(status=9), 400100, "status must be"),
    (work_body(run_frequency="fortnightly"), 400100, "run_frequency"),
    (work_body(extra_params=[1]), 400100, "extra_params"),
    (work_body(colour="red"), 400100, "unknown field"),
    (work_body(user_id="bob"), 403100, "own works"),
    (work_body(category="FLINK_JAR", command=None), 400100, "lambda_id"),
    (work_body(command=None), 400100, "needs a command"),
    (work_body(name="a\x00b"), 400101, "NUL characters"),  # an event Postgres could not keep
])
async def test_bad_works_get_codes_and_change_nothing(alice: httpx.AsyncClient, body: dict[str, object], code: int,
                                                      fragment: str) -> None:
    response = await alice.post("/api/v1/works", json=body)
    assert response.json()["code"] == code and fragment in response.json()["msg"], response.text
    assert set(response.json()) == {"code", "msg"}


async def test_bad_ids_and_params(alice: httpx.AsyncClient) -> None:
    assert (await alice.get("/api/v1/works/xyz")).json()["code"] == 400100
    missing = await alice.get(f"/api/v1/works/{uuid.uuid4().hex}")
    assert missing.status_code == 404 and missing.json()["code"] == 404100
    assert (await alice.get("/api/v1/works", params={"limit": "0"})).json()["code"] == 400100
    assert (await alice.get("/api/v1/works", params={"order": "colour"})).json()["code"] == 400100
    nul = await alice.get("/api/v1/works/search", params={"description": "a\x00b"})
    assert nul.status_code == 400 and nul.json()["code"] == 400100 and "NUL" in nul.json()["msg"], nul.text
    assert (await alice.post("/api/v1/works", content="{nope")).json()["code"] == 400101
    assert (await alice.get("/api/v1/nothing")).json() == {"code": 404100, "msg": "no route /api/v1/nothing"}
    wrong_method = await alice.delete("/api/v1/works")
    assert wrong_method.status_code == 405 and wrong_method.json()["code"] == 405100, wrong_method.text
    async with httpx.AsyncClient(base_url=str(alice.base_url)) as anonymous:
        assert (await anonymous.get("/api/v1/works")).json()["code"] == 401100
