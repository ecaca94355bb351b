"""The job API of seed 001: run, job_info, list_jobs, cancel, delete."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import Response

from events.base import Command, new_id, utcnow
from events.codec import encode
from events.jobs import CancelJob, DeleteJob, FileRef, RunJob
from events.topics import JOB_COMMANDS
from projections.jobs import COLUMNS, from_record
from services.api.errors import BadRequest, Conflict, Forbidden, Gone, NotFound, Unavailable, json_response
from services.api.requests import authenticate, only_fields, parse_uuid, read_json, wait_seconds
from services.config import User
from services.jobs.lifecycle import CANCELLED, CANCELLING, FINISHED, STATES, Job
from services.kafka import BrokerUnavailable

log = logging.getLogger(__name__)

MAX_TTL = 365 * 24 * 3600
MAX_RETENTION = 10 * 365 * 24 * 3600
MAX_COMMAND = 64 * 1024
MAX_INPUT_FILES = 1000
MAX_LIMIT = 1000

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM jobs"


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


async def _send(request: Request, command: Command) -> None:
    try:
        await request.app.state.bus.send(JOB_COMMANDS, command.stream_id, encode(command))
    except BrokerUnavailable as exc:
        raise Unavailable(f"the command was not accepted: {exc}") from exc


async def _fetch_job(pool: asyncpg.Pool, job_id: str) -> Job | None:
    record = await pool.fetchrow(f"{_SELECT} WHERE job_id = $1", job_id)
    return from_record(record) if record else None


async def visible_job(request: Request, user: User, job_id: str) -> Job:
    """The job if this user may see it: 404 unknown, 410 deleted, 403 another user's."""
    state = request.app.state
    job: Job | None = await state.watch.read(job_id, lambda: _fetch_job(state.pool, job_id))
    if job is None:
        raise NotFound(f"no job {job_id}")
    if job.deleted:
        raise Gone(f"job {job_id} was deleted")
    if job.user_id != user.user_id and not user.is_admin:
        raise Forbidden(f"job {job_id} belongs to another user")
    return job


async def _file_refs(request: Request, user: User, ids: list[str], what: str) -> list[FileRef]:
    state = request.app.state

    async def fetch() -> list[asyncpg.Record]:
        return await state.pool.fetch(  # type: ignore[no-any-return]
            "SELECT f.file_id, f.owner_id, f.name, f.purged_at, j.deleted AS job_deleted "
            "FROM files f LEFT JOIN jobs j ON j.job_id = f.job_id WHERE f.file_id = ANY($1::uuid[])",
            ids,
        )

    rows = await fetch()
    if len(rows) < len(set(ids)) and any(state.watch.is_recent(i) for i in ids):
        rows = await state.watch.until(fetch, lambda found: len(found) == len(set(ids)))  # just uploaded
    found = {str(r["file_id"]): r for r in rows}
    refs = []
    for file_id in ids:
        row = found.get(file_id)
        if row is None or row["purged_at"] is not None or row["job_deleted"]:
            raise BadRequest(f"{what}: unknown file id {file_id}; upload it with POST /api/files first")
        if row["owner_id"] != user.user_id and not user.is_admin:
            raise BadRequest(f"{what}: file {file_id} belongs to another user")
        refs.append(FileRef(file_id, row["name"]))
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise BadRequest(f"{what}: two files share the name {sorted(n for n in names if names.count(n) > 1)[0]!r}")
    return refs


async def run(request: Request) -> Response:
    user = authenticate(request)
    config = request.app.state.config
    body = only_fields(await read_json(request, config.max_json_body),
                       {"command", "binary", "input_files", "ttl", "retention"}, {"command"})
    command = body["command"]
    if not isinstance(command, str) or not command.strip():
        raise BadRequest("command must be a non-empty string")
    if len(command) > MAX_COMMAND:  # NUL, which no argv holds, is refused by read_json
        raise BadRequest(f"command must be at most {MAX_COMMAND} characters")
    ttl = body.get("ttl")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_TTL):
        raise BadRequest(f"ttl must be a whole number of seconds from 1 to {MAX_TTL}")
    retention = body.get("retention")
    if retention is not None and (not isinstance(retention, int) or isinstance(retention, bool)
                                  or not 1 <= retention <= MAX_RETENTION):
        raise BadRequest(f"retention must be a whole number of seconds from 1 to {MAX_RETENTION}")
    binary_id = parse_uuid(body["binary"], "binary") if body.get("binary") is not None else None
    inputs = body.get("input_files") or []
    if not isinstance(inputs, list) or len(inputs) > MAX_INPUT_FILES:
        raise BadRequest(f"input_files must be an array of at most {MAX_INPUT_FILES} file ids")
    input_ids = [parse_uuid(v, f"input_files[{i}]") for i, v in enumerate(inputs)]
    binary = (await _file_refs(request, user, [binary_id], "binary"))[0] if binary_id else None
    input_files = await _file_refs(request, user, input_ids, "input_files") if input_ids else []
    if binary and any(f.name == binary.name for f in input_files):
        raise BadRequest(f"binary and an input file share the name {binary.name!r}")

    canonical: dict[str, Any] = {"command": command, "binary": binary_id, "input_files": input_ids, "ttl": ttl}
    if retention is not None:
        canonical["retention"] = retention
    request_hash = hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()
    job_id = new_id()
    key = request.headers.get("idempotency-key")
    if key is not None:
        if not 1 <= len(key) <= 255:
            raise BadRequest("Idempotency-Key must be 1 to 255 characters")
        claimed = await _claim_idempotency_key(request.app.state.pool, user, key, request_hash, job_id,
                                               request.app.state.config.idempotency_ttl)
        if claimed != job_id and await _fetch_job(request.app.state.pool, claimed) is not None:
            return json_response({"job_id": claimed}, 201)  # it reached Kafka: nothing to complete
        job_id = claimed
    await _send(request, RunJob(
        command_id=new_id(), stream_id=job_id, issued_at=utcnow(), actor=user.user_id, user_id=user.user_id,
        command=command, binary=binary, input_files=input_files, ttl=ttl, request_hash=request_hash,
        retention=retention,
    ))
    return json_response({"job_id": job_id}, 201)


async def _claim_idempotency_key(pool: asyncpg.Pool, user: User, key: str, request_hash: str, job_id: str,
                                 ttl: float) -> str:
    """The job id bound to this key: a new binding (also of a key first used more than `ttl` seconds
    ago), or the earlier one if the body is the same.

    On a repeat whose job the projections do not show yet, the command is produced again with the
    same job id: if the first attempt never reached Kafka this completes it; otherwise the lifecycle
    agent ignores the duplicate. (A job they show is not sent again: its state may have been
    forgotten by the lifecycle agent since, which would take the copy for a new job.)
    """
    row = await pool.fetchrow(
        "WITH ins AS (INSERT INTO idempotency_keys (user_id, key, request_hash, job_id) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (user_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, job_id = EXCLUDED.job_id, "
        "created_at = now() WHERE idempotency_keys.created_at < now() - make_interval(secs => $5) "
        "RETURNING request_hash, job_id) "
        "SELECT request_hash, job_id FROM ins UNION ALL "
        "SELECT request_hash, job_id FROM idempotency_keys WHERE user_id = $1 AND key = $2 LIMIT 1",
        user.user_id, key, request_hash, job_id, ttl,
    )
    assert row is not None
    if row["request_hash"] != request_hash:
        raise Conflict("Idempotency-Key was already used with a different body", job_id=str(row["job_id"]))
    return str(row["job_id"])


async def expire_idempotency_keys(db: asyncpg.Pool | asyncpg.Connection, ttl: float) -> int:
    """Delete the keys first used more than `ttl` seconds ago; how many went."""
    status = await db.execute("DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)", ttl)
    return int(status.split()[-1])


async def expire_idempotency_keys_forever(pool: asyncpg.Pool, ttl: float, every: float = 600.0) -> None:
    """Each API process expires keys now and then (two doing it at once is harmless)."""
    while True:
        try:
            await expire_idempotency_keys(pool, ttl)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("expiring idempotency keys failed: %r", exc)
        await asyncio.sleep(every)


def job_view(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "state": job.state,
        "answer_id": job.answer_id,
        "stderr_id": job.stderr_id,
        "exit_code": job.exit_code,
        "error": job.error,
        "command": job.command,
        "user_id": job.user_id,
        "binary": job.binary.file_id if job.binary else None,
        "input_files": [f.file_id for f in job.input_files],
        "ttl": job.ttl,
        "attempt": job.attempt,
        "submitted_at": _iso(job.submitted_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "expires_at": _iso(job.deadline),
        "retention": job.retention,
    }


async def job_info(request: Request) -> Response:
    """The job; with `?wait=S` (seconds, up to 60), once it has finished or S has passed."""
    user = authenticate(request)
    job_id = parse_uuid(request.path_params["job_id"], "job_id")
    wait = wait_seconds(request.query_params.get("wait"))
    job = await visible_job(request, user, job_id)
    if wait and not job.finished:
        state = request.app.state
        waited = await state.job_ends.until_finished(job_id, wait, lambda: _fetch_job(state.pool, job_id), _over,
                                                     state.watch)
        if waited is None or waited.deleted:
            raise Gone(f"job {job_id} was deleted")
        job = waited
    return json_response(job_view(job))


def _over(job: Job | None) -> bool:
    return job is None or job.finished or job.deleted


def _cursor_encode(submitted_at: datetime, job_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([submitted_at.isoformat(), job_id])).decode().rstrip("=")


def _cursor_decode(cursor: str) -> tuple[datetime, str]:
    try:
        at, job_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(at), parse_uuid(job_id, "cursor")
    except (ValueError, TypeError, BadRequest):
        raise BadRequest("cursor is not one that list_jobs returned") from None


def _time_param(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time such as 2026-01-31T12:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


LIST_PARAMS = {"state", "since", "until", "user_id", "limit", "cursor"}


async def list_jobs(request: Request) -> Response:
    user = authenticate(request)
    params = request.query_params
    unknown = sorted(set(params) - LIST_PARAMS)
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r}; allowed: {', '.join(sorted(LIST_PARAMS))}")
    where = ["NOT deleted"]
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if not user.is_admin:
        if params.get("user_id", user.user_id) != user.user_id:
            raise Forbidden("only an admin may list another user's jobs")
        where.append(f"user_id = {arg(user.user_id)}")
    elif "user_id" in params:
        where.append(f"user_id = {arg(params['user_id'])}")
    if "state" in params:
        states = [s.strip() for s in params["state"].split(",") if s.strip()]
        bad = [s for s in states if s not in STATES]
        if bad or not states:
            raise BadRequest(f"state must be one or more of {', '.join(STATES)} (comma separated)")
        where.append(f"state = ANY({arg(states)}::text[])")
    if "since" in params:
        where.append(f"submitted_at >= {arg(_time_param(params['since'], 'since'))}")
    if "until" in params:
        where.append(f"submitted_at < {arg(_time_param(params['until'], 'until'))}")
    raw_limit = params.get("limit", "100")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    limit = int(raw_limit)
    if "cursor" in params:
        at, last_id = _cursor_decode(params["cursor"])
        where.append(f"(submitted_at, job_id) < ({arg(at)}, {arg(last_id)}::uuid)")
    rows = await request.app.state.pool.fetch(
        f"SELECT job_id, submitted_at FROM jobs WHERE {' AND '.join(where)} "
        f"ORDER BY submitted_at DESC, job_id DESC LIMIT {arg(limit + 1)}",
        *args,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = _cursor_encode(rows[-1]["submitted_at"], str(rows[-1]["job_id"])) if more else None
    return json_response({"job_ids": [str(r["job_id"]) for r in rows], "next_cursor": cursor})


async def _job_from_body(request: Request, user: User) -> Job:
    if request.method == "DELETE" and "job_id" in request.query_params:
        raw: Any = request.query_params["job_id"]
    else:
        body = only_fields(await read_json(request, request.app.state.config.max_json_body), {"job_id"}, {"job_id"})
        raw = body["job_id"]
    return await visible_job(request, user, parse_uuid(raw, "job_id"))


async def cancel(request: Request) -> Response:
    user = authenticate(request)
    job = await _job_from_body(request, user)
    if job.state in (CANCELLING, CANCELLED):
        return json_response({"job_id": job.job_id})  # a repeated cancel changes nothing
    if job.state in FINISHED:
        raise Conflict(f"job {job.job_id} is already {job.state}", state=job.state)
    await _send(request, CancelJob(command_id=new_id(), stream_id=job.job_id, issued_at=utcnow(), actor=user.user_id,
                                   reason=f"cancelled by {user.user_id}"))
    return json_response({"job_id": job.job_id})


async def delete(request: Request) -> Response:
    user = authenticate(request)
    job = await _job_from_body(request, user)
    await _send(request, DeleteJob(command_id=new_id(), stream_id=job.job_id, issued_at=utcnow(), actor=user.user_id))
    # Answer once the projection shows the deletion, so job_info says 410 from now on.
    pool = request.app.state.pool
    await request.app.state.watch.until(lambda: _fetch_job(pool, job.job_id), lambda j: j is not None and j.deleted)
    return json_response({"job_id": job.job_id})
