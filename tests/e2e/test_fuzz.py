"""Fuzz every endpoint of /openapi.json with schemathesis: no request may produce a 5xx.

A longer or different run: SKYJOBS_FUZZ_EXAMPLES=500 SKYJOBS_FUZZ_SEED=7 .venv/bin/pytest tests/e2e/test_fuzz.py
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.conftest import ARTIFACTS, Stack


async def test_no_request_produces_a_server_error(stack: Stack) -> None:
    schemathesis = Path(sys.executable).parent / "schemathesis"
    report = ARTIFACTS / "schemathesis.txt"
    process = await asyncio.create_subprocess_exec(
        str(schemathesis), "run", f"{stack.url}/openapi.json",
        "--checks", "not_a_server_error",
        "--header", f"Authorization: Bearer {stack.tokens['fuzz']}",
        "--max-examples", os.environ.get("SKYJOBS_FUZZ_EXAMPLES", "40"),
        "--seed", os.environ.get("SKYJOBS_FUZZ_SEED", "1"), "--request-timeout", "20",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1"},
    )
    output, _ = await asyncio.wait_for(process.communicate(), 600)
    report.write_bytes(output)
    await _delete_fuzzed_works(stack)
    assert process.returncode == 0, output.decode()[-4000:]


async def _delete_fuzzed_works(stack: Stack) -> None:
    """Fuzzed works may run random commands every second: remove them before the next tests."""
    async with stack.client("fuzz") as client:
        while works := (await client.get("/api/v1/works", params={"limit": 1000})).json()["data"]:
            for work in works:
                await client.delete(f"/api/v1/works/{work['work_id']}")
