"""The job API end to end: real HTTP, Kafka, faust worker, executor subprocesses and Postgres."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import httpx

from services import db
from services.api.jobs import expire_idempotency_keys
from tests.conftest import Stack, eventually, wait_state


async def run(client: httpx.AsyncClient, command: str, **fields: object) -> str:
    response = await client.post("/api/job/run", json={"command": command, **fields})
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


async def upload(client: httpx.AsyncClient, data: bytes, name: str) -> str:
    response = await client.post("/api/files", content=data, params={"name": name})
    assert response.status_code == 201, response.text
    return str(response.json()["file_id"])


async def test_failing_command_reports_exit_code_and_stderr(alice: httpx.AsyncClient) -> None:
    job_id = await run(alice, "echo oops >&2; exit 3")
    info = await wait_state(alice, job_id, "failed")
    assert info["exit_code"] == 3 and info["error"] == "exited with code 3"
    assert (await alice.get(f"/api/files/{info['stderr_id']}")).text == "oops\n"
    assert info["submitted_at"].endswith("Z") and info["finished_at"] >= info["started_at"]


async def test_what_a_job_leaves_running_ends_with_it(alice: httpx.AsyncClient) -> None:
    job_id = await run(alice, "sleep 300 >/dev/null 2>&1 & echo $!")
    info = await wait_state(alice, job_id, "succeeded")
    pid = int((await alice.get(f"/api/files/{info['answer_id']}")).text)

    async def gone() -> bool:  # killed with its process group when the shell exited, and reaped
        try:
            return b"sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return True

    await eventually(gone, timeout=10, what=f"the job's background sleep (pid {pid}) gone")


async def test_a_job_runs_in_a_directory_of_its_own_under_the_work_dir(stack: Stack, alice: httpx.AsyncClient) -> None:
    job_id = await run(alice, "pwd; ls -A | wc -l; echo $HOME $SKYJOBS_JOB_ID")
    info = await wait_state(alice, job_id, "succeeded")
    workspace = stack.data_dir / "jobs" / job_id  # SKYJOBS_WORK_DIR of the test stack
    output = (await alice.get(f"/api/files/{info['answer_id']}")).text
    assert output == f"{workspace}\n0\n{workspace} {job_id}\n", output
    assert not workspace.exists()  # removed before the job's end was reported


async def test_binary_and_input_files_are_placed_in_the_working_directory(alice: httpx.AsyncClient) -> None:
    script = await upload(alice, b"#!/bin/sh\nwc -l < \"$1\"\ncat \"$1\" | tr a-z A-Z\n", "count.sh")
    data = await upload(alice, b"one\ntwo\n", "words.txt")
    multipart = await alice.post("/api/files", files={"file": ("extra.txt", b"three\n", "text/plain")})
    assert multipart.status_code == 201
    extra = multipart.json()["file_id"]
    job_id = await run(alice, "./count.sh words.txt && cat extra.txt && ls -l count.sh | cut -c1-10",
                       binary=script, input_files=[data, extra])
    info = await wait_state(alice, job_id, "succeeded", "failed")
    assert info["state"] == "succeeded", info
    output = (await alice.get(f"/api/files/{info['answer_id']}")).text
    assert output == "2\nONE\nTWO\nthree\n-rwxr-xr-x\n"
    assert info["binary"] == script and info["input_files"] == [data, extra]


async def test_cancel_running_job_then_repeat_and_finished(alice: httpx.AsyncClient) -> None:
    job_id = await run(alice, "trap '' TERM; sleep 60 & wait; sleep 60")
    await wait_state(alice, job_id, "running")
    response = await alice.post("/api/job/cancel", json={"job_id": job_id})
    assert response.status_code == 200 and response.json() == {"job_id": job_id}
    info = await wait_state(alice, job_id, "cancelled", timeout=30)  # SIGTERM ignored: SIGKILL after the grace
    assert "cancelled by alice" in info["error"]
    assert (await alice.post("/api/job/cancel", json={"job_id": job_id})).status_code == 200  # repeat: no-op
    done = await run(alice, "true")
    await wait_state(alice, done, "succeeded")
    conflict = await alice.post("/api/job/cancel", json={"job_id": done})
    assert conflict.status_code == 409
    assert conflict.json()["state"] == "succeeded" and "succeeded" in conflict.json()["error"]


async def test_job_info_waits_for_the_end_when_asked(alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    job_id = await run(alice, "sleep 1; echo done")
    info = (await alice.get(f"/api/job/job_info/{job_id}", params={"wait": 25})).json()
    assert info["state"] == "succeeded", info  # one call: it answered once the end was projected
    assert (await alice.get(f"/api/files/{info['answer_id']}")).text == "done\n"
    again = await alice.get(f"/api/job/job_info/{job_id}", params={"wait": 60})  # finished: answered at once
    assert again.status_code == 200 and again.json() == info
    slow = await run(alice, "sleep 60")
    waited = await alice.get(f"/api/job/job_info/{slow}", params={"wait": "0.5"})
    assert waited.status_code == 200 and waited.json()["state"] in ("queued", "running")  # as it is when S passed
    assert (await bob.get(f"/api/job/job_info/{slow}", params={"wait": 5})).status_code == 403  # before waiting
    for bad in ("-1", "61", "nan", "inf", "soon", "true"):
        response = await alice.get(f"/api/job/job_info/{slow}", params={"wait": bad})
        assert response.status_code == 400 and "wait must be" in response.json()["error"], (bad, response.text)
    waiting = asyncio.ensure_future(alice.get(f"/api/job/job_info/{slow}", params={"wait": 25}))
    assert (await alice.request("DELETE", "/api/job/delete", json={"job_id": slow})).status_code == 200
    deleted = await waiting
    assert deleted.status_code == 410, deleted.text  # a waiter learns of the delete too


async def test_cancel_queued_job_never_runs(alice: httpx.AsyncClient) -> None:
    marker = f"/tmp/skyjobs-should-not-exist-{uuid.uuid4()}"
    # Cancel in the same breath as run: whichever way the race goes, the command must not finish.
    job_id = await run(alice, f"sleep 2; touch {marker}")
    await alice.post("/api/job/cancel", json={"job_id": job_id})
    info = await wait_state(alice, job_id, "cancelled")
    assert info["exit_code"] in (None, 143, 137)
    assert not os.path.exists(marker)  # cancelled before `sleep 2` ended: the touch never ran


async def test_ttl_expires_a_running_job(alice: httpx.AsyncClient) -> None:
    job_id = await run(alice, "sleep 60", ttl=1)
    info = await wait_state(alice, job_id, "expired", timeout=20)
    assert info["error"] == "ttl of 1 s passed" and info["expires_at"] is not None


async def test_delete_hides_the_job_and_purges_its_output(alice: httpx.AsyncClient) -> None:
    job_id = await run(alice, "echo secret")
    info = await wait_state(alice, job_id, "succeeded")
    assert (await alice.get(f"/api/files/{info['answer_id']}")).status_code == 200
    response = await alice.request("DELETE", "/api/job/delete", content=f'{{"job_id": "{job_id}",}}')
    assert response.status_code == 200 and response.json() == {"job_id": job_id}
    gone = await alice.get(f"/api/job/job_info/{job_id}")
    assert gone.status_code == 410 and "deleted" in gone.json()["error"]
    assert job_id not in (await alice.get("/api/job/list_jobs")).json()["job_ids"]
    assert (await alice.get(f"/api/files/{info['answer_id']}")).status_code == 410
    assert (await alice.post("/api/job/cancel", json={"job_id": job_id})).status_code == 410


async def test_delete_running_job_cancels_it(alice: httpx.AsyncClient, admin: httpx.AsyncClient) -> None:
    job_id = await run(alice, "sleep 60")
    await wait_state(alice, job_id, "running")
    assert (await alice.request("DELETE", "/api/job/delete", params={"job_id": job_id})).status_code == 200
    assert (await alice.get(f"/api/job/job_info/{job_id}")).status_code == 410


async def test_users_see_only_their_own_jobs(alice: httpx.AsyncClient, bob: httpx.AsyncClient,
                                            admin: httpx.AsyncClient) -> None:
    job_id = await run(alice, "true")
    assert (await bob.get(f"/api/job/job_info/{job_id}")).status_code == 403
    assert (await bob.post("/api/job/cancel", json={"job_id": job_id})).status_code == 403
    assert (await bob.request("DELETE", "/api/job/delete", json={"job_id": job_id})).status_code == 403
    assert job_id not in (await bob.get("/api/list_jobs")).json()["job_ids"]
    assert (await bob.get("/api/list_jobs", params={"user_id": "alice"})).status_code == 403
    assert (await admin.get(f"/api/job/job_info/{job_id}")).status_code == 200
    assert job_id in (await admin.get("/api/list_jobs", params={"user_id": "alice"})).json()["job_ids"]
    async with httpx.AsyncClient(base_url=str(alice.base_url)) as anonymous:
        assert (await anonymous.get(f"/api/job/job_info/{job_id}")).status_code == 401
        bad = await anonymous.get("/api/list_jobs", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json() == {"error": "unknown bearer token"}


async def test_idempotency_key(alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = await alice.post("/api/job/run", json={"command": "echo once"}, headers=key)
    again = await alice.post("/api/job/run", json={"command": "echo once"}, headers=key)
    assert first.status_code == again.status_code == 201
    assert first.json()["job_id"] == again.json()["job_id"]
    other = await alice.post("/api/job/run", json={"command": "echo twice"}, headers=key)
    assert other.status_code == 409 and "different body" in other.json()["error"]
    bobs = await bob.post("/api/job/run", json={"command": "echo once"}, headers=key)  # keys are per user
    assert bobs.status_code == 201 and bobs.json()["job_id"] != first.json()["job_id"]
    await wait_state(alice, first.json()["job_id"], "succeeded")


async def test_an_idempotency_key_is_forgotten_after_its_ttl(stack: Stack, alice: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = (await alice.post("/api/job/run", json={"command": "echo once"}, headers=key)).json()["job_id"]
    conn = await db.connect(stack.infra.database_url)
    try:  # a day passes for this key (SKYJOBS_IDEMPOTENCY_TTL: 24 h)
        await conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = $1",
                           key["Idempotency-Key"])
        again = await alice.post("/api/job/run", json={"command": "echo twice"}, headers=key)  # bound anew
        assert again.status_code == 201 and again.json()["job_id"] != first
        assert (await alice.post("/api/job/run", json={"command": "echo twice"}, headers=key)).json() == again.json()
        await conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = $1",
                           key["Idempotency-Key"])
        assert await expire_idempotency_keys(conn, 86400) >= 1
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", key["Idempotency-Key"]) == 0
    finally:
        await conn.close()
    await wait_state(alice, again.json()["job_id"], "succeeded")
    await wait_state(alice, first, "succeeded")


async def test_list_jobs_newest_first_with_filters_and_cursor(stack: Stack) -> None:
    async with stack.client("admin") as admin:
        # The admin submits jobs and finds them by state and time; pagination walks them all.
        ids = [await run(admin, "true") for _ in range(5)]
        failing = await run(admin, "false")
        for job_id in ids:
            await wait_state(admin, job_id, "succeeded")
        await wait_state(admin, failing, "failed")
        page = (await admin.get("/api/job/list_jobs", params={"user_id": "admin", "limit": 3})).json()
        assert len(page["job_ids"]) == 3 and page["next_cursor"]
        assert page["job_ids"][0] == failing and page["job_ids"][1:] == ids[::-1][:2]
        walked = list(page["job_ids"])
        cursor = page["next_cursor"]
        while cursor:
            nxt = (await admin.get("/api/job/list_jobs", params={"user_id": "admin", "limit": 3, "cursor": cursor})).json()
            walked += nxt["job_ids"]
            cursor = nxt["next_cursor"]
        assert walked.index(failing) < walked.index(ids[-1]) < walked.index(ids[0])
        assert len(walked) == len(set(walked))
        failed = (await admin.get("/api/list_jobs", params={"state": "failed", "user_id": "admin"})).json()["job_ids"]
        assert failing in failed and not set(ids) & set(failed)
        info = (await admin.get(f"/api/job/job_info/{ids[2]}")).json()
        since = (await admin.get("/api/list_jobs", params={"since": info["submitted_at"], "user_id": "admin",
                                                           "limit": 1000})).json()["job_ids"]
        assert ids[2] in since and ids[0] not in since


async def test_resource_limits_stop_the_job(alice: httpx.AsyncClient) -> None:
    big_file = await run(alice, "head -c 80000000 /dev/zero > big")  # over the tests' 64 MiB limit
    info = await wait_state(alice, big_file, "failed")
    assert "file size limit" in info["error"], info
    memory = await run(alice, "python3 -c 'x = bytearray(3 * 1024 ** 3)'")  # over the 2 GiB address space
    info = await wait_state(alice, memory, "failed")
    assert info["exit_code"] != 0


async def test_jobs_run_as_an_unprivileged_user(alice: httpx.AsyncClient) -> None:
    job_id = await run(alice, "id -u")
    info = await wait_state(alice, job_id, "succeeded")
    uid = (await alice.get(f"/api/files/{info['answer_id']}")).text.strip()
    if os.geteuid() == 0:
        assert uid != "0"


async def test_many_jobs_all_finish(admin: httpx.AsyncClient) -> None:
    ids = await asyncio.gather(*(run(admin, f"echo {i}") for i in range(100)))

    async def all_done() -> bool:
        states = await asyncio.gather(*(admin.get(f"/api/job/job_info/{j}") for j in ids))
        return all(s.json()["state"] == "succeeded" for s in states)

    await eventually(all_done, timeout=60, interval=0.5, what="100 jobs succeeded")
    info = (await admin.get(f"/api/job/job_info/{ids[42]}")).json()
    assert (await admin.get(f"/api/files/{info['answer_id']}")).text == "42\n"
