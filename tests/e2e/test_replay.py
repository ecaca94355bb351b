"""Replay: read models rebuilt from the whole log under load, swapped in while the API serves, equal."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import asyncpg
import httpx
import orjson

from projections.replay import tables_of
from services import db
from tests.conftest import Stack, eventually


async def _rows(conn: asyncpg.Connection, schema: str, table: str) -> list[Any]:
    key = {"event_log": 'topic, partition, "offset"', "projector_offsets": "topic, partition"}.get(table, "1")
    return [tuple(r) for r in await conn.fetch(f'SELECT * FROM "{schema}"."{table}" ORDER BY {key}')]


async def test_replay_all_under_load_swaps_in_equal_tables(stack: Stack, admin: httpx.AsyncClient) -> None:
    stop = asyncio.Event()
    submitted: list[str] = []

    async def load() -> None:
        while not stop.is_set():
            response = await admin.post("/api/job/run", json={"command": "echo replay"})
            submitted.append(response.json()["job_id"])
            await asyncio.sleep(0.02)

    loader = asyncio.ensure_future(load())
    await asyncio.sleep(1)
    replay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "replay", "--all", "--keep-old",
        env={**os.environ, **stack.env}, stdout=asyncio.subprocess.PIPE)
    served = 0
    while replay.returncode is None:  # the API keeps answering during the rebuild and the swap
        if submitted:
            assert (await admin.get(f"/api/job/job_info/{submitted[-1]}")).status_code == 200
            served += 1
        if len(submitted) > 150:
            stop.set()
        try:
            await asyncio.wait_for(replay.wait(), 0.2)
        except TimeoutError:
            pass
    stop.set()
    await loader
    output, _ = await replay.communicate()
    assert replay.returncode == 0
    result = orjson.loads(output.strip().splitlines()[-1])
    assert result["events"] > 0 and served > 0

    async def all_done() -> bool:
        states = await asyncio.gather(*(admin.get(f"/api/job/job_info/{j}") for j in submitted))
        return all(s.json()["state"] == "succeeded" for s in states)

    await eventually(all_done, timeout=120, interval=0.5, what="the load's jobs succeeded on the swapped tables")
    # Rebuild once more from the log, now quiet, and compare every row with the live tables.
    conn = await db.connect(stack.infra.database_url)
    try:
        again = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "replay", "--all", "--keep-old",
            env={**os.environ, **stack.env}, stdout=asyncio.subprocess.PIPE)
        second, _ = await again.communicate()
        assert again.returncode == 0
        old = orjson.loads(second.strip().splitlines()[-1])["old_schema"]
        for name in result["projections"]:
            for table in tables_of(name):
                live, replaced = await _rows(conn, "public", table), await _rows(conn, old, table)
                assert live == replaced, table
        for schema in (old, result["old_schema"]):
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()
