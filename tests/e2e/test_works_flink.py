"""FLINK_JAR and FLINK_SQL works end to end: a real (tiny) Flink job run as a task, both ways."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import eventually
from tests.fixtures.flink_jar import FLINK, MAIN_CLASS, build_wordcount_jar

pytestmark = [pytest.mark.flink, pytest.mark.timeout(600),
              pytest.mark.skipif(not shutil.which("javac"), reason="needs a JDK's javac to build the test job")]


async def _run_now_and_wait(client: httpx.AsyncClient, work_id: str) -> dict[str, object]:
    task_id = (await client.post(f"/api/v1/works/{work_id}/tasks")).json()["data"]["task_id"]

    async def finished() -> dict[str, object] | None:
        data = (await client.get(f"/api/v1/works/{work_id}/tasks/{task_id}")).json()["data"]
        return data if data["state"] in ("succeeded", "failed") else None

    return await eventually(finished, timeout=300, interval=1, what="the Flink task finished")


async def test_flink_jar_and_flink_sql_works_run_real_flink_jobs(alice: httpx.AsyncClient,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    from infra.flink import flink_libs

    jar = build_wordcount_jar(flink_libs(), tmp_path_factory.mktemp("wordcount"))
    jar_id = (await alice.post("/api/files", content=jar.read_bytes(), params={"name": "wordcount.jar"})).json()["file_id"]
    sql = (FLINK / "count.sql").read_bytes()
    sql_id = (await alice.post("/api/files", content=sql, params={"name": "count.sql"})).json()["file_id"]
    base = {"user_id": "alice", "description": "flink", "type": "BATCH", "run_frequency": None}
    jar_work = (await alice.post("/api/v1/works", json={
        **base, "name": "wordcount jar", "category": "FLNK_JAR", "lambda_id": jar_id, "main_class_name": MAIN_CLASS,
        "extra_params": ["to be or", "not to be"], "java_version": "17"})).json()["data"]
    assert jar_work["category"] == "FLINK_JAR"
    sql_work = (await alice.post("/api/v1/works", json={
        **base, "name": "wordcount sql", "category": "FLINK_SQL", "lambda_id": sql_id})).json()["data"]

    jar_task = await _run_now_and_wait(alice, str(jar_work["work_id"]))
    if jar_task["state"] != "succeeded":
        stderr = (await alice.get(str(jar_task["stderr_url"]))).text if jar_task["stderr_url"] else ""
        pytest.fail(f"{jar_task['error']}: {stderr[-3000:]}")
    output = (await alice.get(str(jar_task["output_url"]))).text
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\S+)=(\d+)$", output, re.MULTILINE)}
    assert counts == {"to": 2, "be": 2, "or": 1, "not": 1}, output

    sql_task = await _run_now_and_wait(alice, str(sql_work["work_id"]))
    if sql_task["state"] != "succeeded":
        stderr = (await alice.get(str(sql_task["stderr_url"]))).text if sql_task["stderr_url"] else ""
        pytest.fail(f"{sql_task['error']}: {stderr[-3000:]}")
    table = (await alice.get(str(sql_task["output_url"]))).text
    rows = {m[1]: int(m[2]) for m in re.finditer(r"^\|\s*(\w+)\s*\|\s*(\d+)\s*\|$", table, re.MULTILINE)}
    assert rows == {"to": 2, "be": 2, "or": 1, "not": 1}, table
    assert Path(str(FLINK / "count.sql")).exists()
