"""Bad input gets a 400 saying what is wrong, in the seed's envelope, and changes nothing."""

from __future__ import annotations

import uuid

import httpx
import pytest

BAD_RUNS = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"command": 42}', "command must be a non-empty string"),
    ('{"command": ""}', "command must be a non-empty string"),
    ('{"command": "true", "colour": "red"}', "unknown field 'colour'"),
    ('{"ttl": 5}', "missing required field 'command'"),
    ('{"command": "true", "ttl": -1}', "ttl must be a whole number"),
    ('{"command": "true", "ttl": 0}', "ttl must be a whole number"),
    ('{"command": "true", "ttl": 18446744073709551615}', "ttl must be a whole number"),
    ('{"command": "true", "ttl": "10"}', "ttl must be a whole number"),
    ('{"command": "true", "ttl": 1.5}', "ttl must be a whole number"),
    ('{"command": "true", "ttl": true}', "ttl must be a whole number"),
    ('{"command": "true", "retention": 0}', "retention must be a whole number"),
    ('{"command": "true", "retention": 315360001}', "retention must be a whole number"),
    ('{"command": "true", "retention": false}', "retention must be a whole number"),
    ('{"command": "true", "binary": "not-a-uuid"}', "binary 'not-a-uuid' is not a UUID"),
    ('{"command": "true", "binary": 7}', "binary must be a UUID string"),
    ('{"command": "true", "input_files": "x"}', "input_files must be an array"),
    ('{"command": "true", "input_files": ["x"]}', "input_files[0] 'x' is not a UUID"),
    (f'{{"command": "true", "input_files": ["{uuid.uuid4()}"]}}', "unknown file id"),
    (f'{{"command": "true", "binary": "{uuid.uuid4()}"}}', "unknown file id"),
    ('{"command": "true",, }', "not valid JSON"),
    ('{"command": "a\\u0000b"}', "NUL characters"),
    ('{"command": "true", "x\\u0000": 1}', "NUL characters"),
    ("", "body is empty"),
]


@pytest.mark.parametrize(("body", "message"), BAD_RUNS)
async def test_bad_run_is_a_400_that_says_why(carol: httpx.AsyncClient, body: str, message: str) -> None:
    response = await carol.post("/api/job/run", content=body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and message in response.json()["error"]


async def test_oversized_body(carol: httpx.AsyncClient) -> None:
    response = await carol.post("/api/job/run", json={"command": "x" * (2 * 1024 * 1024)})
    assert response.status_code == 400 and "over the limit" in response.json()["error"]


async def test_bad_ids_and_params(carol: httpx.AsyncClient) -> None:
    assert (await carol.get("/api/job/job_info/nope")).status_code == 400
    unknown = await carol.get(f"/api/job/job_info/{uuid.uuid4()}")
    assert unknown.status_code == 404 and "no job" in unknown.json()["error"]
    for params in ({"limit": "0"}, {"limit": "x"}, {"state": "sleeping"}, {"since": "yesterday"},
                   {"cursor": "garbage"}, {"colour": "red"}):
        response = await carol.get("/api/list_jobs", params=params)
        assert response.status_code == 400, (params, response.text)
    for body in ("{}", '{"job_id": "x"}', '{"job_id": 1}', f'{{"job_id": "{uuid.uuid4()}", "more": 1}}'):
        assert (await carol.post("/api/job/cancel", content=body)).status_code == 400
        assert (await carol.request("DELETE", "/api/job/delete", content=body)).status_code == 400
    assert (await carol.post("/api/job/cancel", json={"job_id": str(uuid.uuid4())})).status_code == 404
    assert (await carol.get("/api/files/zzz")).status_code == 400
    assert (await carol.get(f"/api/files/{uuid.uuid4()}")).status_code == 404
    assert (await carol.get("/api/no/such/route")).json() == {"error": "no route /api/no/such/route"}
    assert (await carol.get("/api/job/run")).status_code == 405


async def test_nul_in_a_query_parameter_is_a_400(admin: httpx.AsyncClient) -> None:
    response = await admin.get("/api/list_jobs", params={"user_id": "a\x00b"})  # Postgres text holds no NUL
    assert response.status_code == 400 and "NUL" in response.json()["error"], response.text


async def test_nothing_was_written_for_the_bad_requests(carol: httpx.AsyncClient, admin: httpx.AsyncClient) -> None:
    # Runs after the tests above (same module, file order): carol never had a valid request.
    assert (await carol.get("/api/list_jobs")).json()["job_ids"] == []
    assert (await admin.get("/api/list_jobs", params={"user_id": "carol"})).json()["job_ids"] == []
