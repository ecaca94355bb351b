"""Works and tasks of seed 003 under /api/v1/works, in the seed's envelope.

Success `{"code": 0, "data": ...}`; failure `{"code": <6 digits>, "msg": "..."}` with these codes:

    400100 validation failed          400    401100 missing or unknown token   401
    400101 body is not JSON           400    403100 another user's work         403
    404100 no such work               404    404101 no such task               404
    405100 method not allowed         405    409100 conflict with the state    409
    410100 the work was deleted       410    503100 Kafka unavailable          503
    500100 internal error             500
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from events.base import Command, new_id, utcnow
from events.codec import encode
from events.topics import WORK_COMMANDS
from events.works import BackfillWork, CreateWork, DeleteWork, RunWorkNow, UpdateWork, WorkSpec
from services.api import errors
from services.api.requests import authenticate, read_json
from services.config import User
from services.kafka import BrokerUnavailable
from services.works import schedule
from services.works.model import MAX_BACKFILL, task_id_for

TYPES = ("STREAMING", "BATCH")
CATEGORIES = ("FLINK_SQL", "FLINK_JAR", "SHELL")
OVERLAP = ("skip", "allow", "cancel_previous")
CATCHUP = ("one", "all", "none")
STATUSES = range(0, 8)
MAX_TEXT = 10_000
MAX_LIMIT = 1000
ORDERS = {"created_at", "updated_at", "name"}
# Task status codes (seed 003 shows 3 for a running task and 0 for a finished one).
TASK_STATUS = {"succeeded": 0, "failed": 1, "queued": 2, "running": 3, "cancelling": 3, "cancelled": 4,
               "expired": 5, "skipped": 6}


class WorkError(Exception):
    """An error of the works API: its business code, HTTP status and message."""

    def __init__(self, code: int, status: int, msg: str) -> None:
        super().__init__(msg)
        self.code, self.status, self.msg = code, status, msg

    def response(self) -> Response:
        return errors.json_response({"code": self.code, "msg": self.msg}, self.status)


def invalid(msg: str) -> WorkError:
    return WorkError(400100, 400, msg)


def ok(data: Any, status: int = 200) -> Response:
    return errors.json_response({"code": 0, "data": data}, status)


def ts(value: datetime | None) -> str | None:
    """YYYY-MM-DDTHH:MM:SSZ in UTC, as the seed says."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


async def handle(request: Request, endpoint: Any) -> Response:
    """Run an endpoint, mapping every error to the seed's envelope."""
    try:
        return await endpoint(request)  # type: ignore[no-any-return]
    except WorkError as exc:
        return exc.response()
    except errors.ApiError as exc:
        return envelope(exc)


def envelope(exc: errors.ApiError) -> Response:
    """An error of the shared code (authentication, JSON bodies, routing) in the seed's envelope: the
    code is the status followed by 100 (400101: the body is not JSON, or too large)."""
    body_error = exc.status == 400 and ("JSON" in exc.message or "body" in exc.message)
    return WorkError(400101 if body_error else exc.status * 1000 + 100, exc.status, exc.message).response()


# --- validation ---------------------------------------------------------------------------------

_FIELDS = {
    "user_id", "name", "description", "type", "category", "status", "work_directory", "main_class_name",
    "extra_params", "java_version", "run_frequency", "command", "lambda_id", "overlap", "catchup", "ttl",
}
_SERVER_SET = {"work_id", "created_at", "updated_at", "deleted_at"}
_REQUIRED = {"user_id", "name", "description", "type", "category"}


def _text(body: dict[str, Any], key: str, required: bool = False, allow_empty: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise invalid(f"{key} is required")
        return None
    if not isinstance(value, str) or (not allow_empty and not value.strip()) or len(value) > MAX_TEXT:
        raise invalid(f"{key} must be a non-empty string of at most {MAX_TEXT} characters")
    return value


def parse_spec(body: Any, base: WorkSpec | None, user: User) -> WorkSpec:
    """The whole definition after applying `body` (a create, or a patch over `base`)."""
    if not isinstance(body, dict):
        raise invalid("body must be a JSON object")
    unknown = sorted(set(body) - _FIELDS - _SERVER_SET)
    if unknown:
        raise invalid(f"unknown field {unknown[0]!r}")
    body = {k: v for k, v in body.items() if k not in _SERVER_SET}  # set by the server, ignored
    if base is None:
        missing = sorted(k for k in _REQUIRED if body.get(k) is None)
        if missing:
            raise invalid(f"{missing[0]} is required")
    merged: dict[str, Any] = msgspec.structs.asdict(base) if base else {}
    for key in body:
        merged[key] = body[key]
    for key in ("user_id", "name"):
        _text(merged, key, required=True)
    _text(merged, "description", required=True, allow_empty=True)
    for key in ("work_directory", "main_class_name", "java_version", "lambda_id", "command"):
        _text(merged, key)
    if merged["user_id"] != user.user_id and not user.is_admin:
        raise WorkError(403100, 403, "a user may only manage their own works (user_id must be yours)")
    category = merged.get("category")
    if category == "FLNK_JAR":  # the seed's spelling
        merged["category"] = category = "FLINK_JAR"
    if category not in CATEGORIES:
        raise invalid(f"category must be one of {', '.join(CATEGORIES)}")
    if merged.get("type") not in TYPES:
        raise invalid(f"type must be one of {', '.join(TYPES)}")
    status = merged.get("status", 1)
    if not isinstance(status, int) or isinstance(status, bool) or status not in STATUSES:
        raise invalid("status must be an integer from 0 to 7")
    merged["status"] = status
    params = merged.get("extra_params")
    if params is None:
        params = []
    elif isinstance(params, str):
        params = [params]
    if not isinstance(params, list) or not all(isinstance(p, str) for p in params) or len(params) > 100:
        raise invalid("extra_params must be a string or a list of at most 100 strings")
    merged["extra_params"] = params
    try:
        schedule.parse(merged.get("run_frequency"))
    except schedule.ScheduleError as exc:
        raise invalid(str(exc)) from None
    if merged.get("run_frequency") is not None and not isinstance(merged["run_frequency"], str):
        raise invalid("run_frequency must be a string")
    for key, allowed in (("overlap", OVERLAP), ("catchup", CATCHUP)):
        merged.setdefault(key, allowed[0])
        if merged[key] not in allowed:
            raise invalid(f"{key} must be one of {', '.join(allowed)}")
    ttl = merged.get("ttl")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= 365 * 86400):
        raise invalid("ttl must be a whole number of seconds from 1 to 31536000")
    if category == "SHELL" and not merged.get("command"):
        raise invalid("a SHELL work needs a command")
    if category in ("FLINK_JAR", "FLINK_SQL") and not merged.get("lambda_id"):
        raise invalid(f"a {category} work needs lambda_id: the file id of its {'jar' if category == 'FLINK_JAR' else 'SQL file'}")
    if category == "FLINK_JAR" and not merged.get("main_class_name"):
        raise invalid("a FLINK_JAR work needs main_class_name")
    return msgspec.convert(merged, WorkSpec)


def parse_work_id(raw: str) -> str:
    try:
        return uuid.UUID(raw).hex
    except ValueError:
        raise invalid(f"work id {raw[:80]!r} is not 32 hex digits") from None


# --- reads --------------------------------------------------------------------------------------

_WORK_COLUMNS = (
    "work_id, lambda_id, user_id, name, description, status, work_directory, main_class_name, extra_params, "
    "java_version, run_frequency, created_at, updated_at, deleted_at, type, category, command, overlap, "
    "catchup, ttl, next_due, last_command_id"
)


def work_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "work_id": row["work_id"], "lambda_id": row["lambda_id"], "user_id": row["user_id"], "name": row["name"],
        "description": row["description"], "status": row["status"], "work_directory": row["work_directory"],
        "main_class_name": row["main_class_name"], "extra_params": row["extra_params"],
        "java_version": row["java_version"], "run_frequency": row["run_frequency"],
        "created_at": ts(row["created_at"]), "updated_at": ts(row["updated_at"]), "deleted_at": ts(row["deleted_at"]),
        "type": row["type"], "category": row["category"], "command": row["command"], "overlap": row["overlap"],
        "catchup": row["catchup"], "ttl": row["ttl"], "next_run_at": ts(row["next_due"]),
    }


async def _fetch_work(pool: asyncpg.Pool, work_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(f"SELECT {_WORK_COLUMNS} FROM works WHERE work_id = $1", work_id)  # type: ignore[no-any-return]


async def visible_work(request: Request, user: User, work_id: str) -> asyncpg.Record:
    state = request.app.state
    row: asyncpg.Record | None = await state.watch.read(str(uuid.UUID(hex=work_id)),
                                                        lambda: _fetch_work(state.pool, work_id))
    if row is None:
        raise WorkError(404100, 404, f"no work {work_id}")
    if row["deleted_at"] is not None:
        raise WorkError(410100, 410, f"work {work_id} was deleted")
    if row["user_id"] != user.user_id and not user.is_admin:
        raise WorkError(403100, 403, f"work {work_id} belongs to another user")
    return row


async def _send_and_wait(request: Request, command: Command, work_id: str) -> asyncpg.Record | None:
    """Produce the command, then wait (bounded) until the projection shows its effect."""
    state = request.app.state
    try:
        await state.bus.send(WORK_COMMANDS, command.stream_id, encode(command))
    except BrokerUnavailable as exc:
        raise WorkError(503100, 503, f"the command was not accepted: {exc}") from exc
    row: asyncpg.Record | None = await state.watch.until(
        lambda: _fetch_work(state.pool, work_id), lambda r: r is not None and r["last_command_id"] == command.command_id
    )
    return row


async def _check_lambda(request: Request, user: User, spec: WorkSpec) -> None:
    if spec.lambda_id is None:
        return
    try:
        file_id = str(uuid.UUID(spec.lambda_id))
    except ValueError:
        raise invalid("lambda_id must be a file id (a UUID) of the data manager") from None
    state = request.app.state

    async def fetch() -> asyncpg.Record | None:
        return await state.pool.fetchrow("SELECT owner_id, purged_at FROM files WHERE file_id = $1", file_id)  # type: ignore[no-any-return]

    row = await state.watch.read(file_id, fetch)
    if row is None or row["purged_at"] is not None:
        raise invalid(f"lambda_id: unknown file id {spec.lambda_id}; upload it with POST /api/files first")
    if row["owner_id"] != spec.user_id and not user.is_admin:
        raise invalid(f"lambda_id: file {spec.lambda_id} belongs to another user")


# --- endpoints ----------------------------------------------------------------------------------


async def create(request: Request) -> Response:
    user = authenticate(request)
    spec = parse_spec(await read_json(request, request.app.state.config.max_json_body), None, user)
    await _check_lambda(request, user, spec)
    work_id = uuid.UUID(new_id()).hex
    command = CreateWork(command_id=new_id(), stream_id=work_id, issued_at=utcnow(), actor=user.user_id, spec=spec)
    row = await _send_and_wait(request, command, work_id)
    if row is None:
        raise WorkError(503100, 503, "the work was accepted but is not visible yet; read it again shortly")
    return ok(work_view(row), 201)


async def get(request: Request) -> Response:
    user = authenticate(request)
    return ok(work_view(await visible_work(request, user, parse_work_id(request.path_params["work_id"]))))


async def patch(request: Request) -> Response:
    user = authenticate(request)
    work_id = parse_work_id(request.path_params["work_id"])
    body = await read_json(request, request.app.state.config.max_json_body)
    row = await visible_work(request, user, work_id)
    base = spec_from_row(row)
    spec = parse_spec(body, base, user)
    if spec.lambda_id != base.lambda_id:
        await _check_lambda(request, user, spec)
    command = UpdateWork(command_id=new_id(), stream_id=work_id, issued_at=utcnow(), actor=user.user_id, spec=spec)
    updated = await _send_and_wait(request, command, work_id)
    return ok(work_view(updated or row))


def spec_from_row(row: asyncpg.Record) -> WorkSpec:
    fields = {f for f in WorkSpec.__struct_fields__}
    return msgspec.convert({k: row[k] for k in fields if k in row.keys()}, WorkSpec)


async def delete(request: Request) -> Response:
    user = authenticate(request)
    work_id = parse_work_id(request.path_params["work_id"])
    await visible_work(request, user, work_id)
    command = DeleteWork(command_id=new_id(), stream_id=work_id, issued_at=utcnow(), actor=user.user_id)
    await _send_and_wait(request, command, work_id)
    return errors.json_response({"code": 0})


def _page(request: Request, allowed: set[str]) -> tuple[int, int]:
    params = request.query_params
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise invalid(f"unknown query parameter {unknown[0]!r}")
    limit_raw, offset_raw = params.get("limit", "10"), params.get("offset", "0")
    if not limit_raw.isdigit() or not 1 <= int(limit_raw) <= MAX_LIMIT:
        raise invalid(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    if not offset_raw.isdigit() or int(offset_raw) > 1_000_000:
        raise invalid("offset is the page number, a whole number from 0")
    return int(limit_raw), int(offset_raw)


def _order(request: Request) -> str:
    raw = request.query_params.get("order", "-created_at")
    field, _, direction = raw.lstrip("-").partition(":")
    desc = raw.startswith("-") or direction.lower() == "desc"
    if field not in ORDERS or direction.lower() not in ("", "asc", "desc") or (raw.startswith("-") and direction):
        raise invalid("order must be created_at, updated_at or name, with a '-' prefix or ':desc' for descending")
    way = "DESC" if desc else "ASC"
    return f"{field} {way}, work_id {way}"


LIST_PARAMS = {"limit", "offset", "user_id", "name", "description", "status", "run_frequency", "order"}


async def _list(request: Request, substring: bool) -> Response:
    user = authenticate(request)
    allowed = LIST_PARAMS | ({"q"} if substring else set())
    limit, page = _page(request, allowed)
    params = request.query_params
    where = ["deleted_at IS NULL"]
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    owner = params.get("user_id")
    if not user.is_admin:
        if owner not in (None, user.user_id):
            raise WorkError(403100, 403, "only an admin may list another user's works")
        owner = user.user_id
    if owner is not None:
        where.append(f"user_id = {arg(owner)}")
    for key in ("name", "description"):
        if key in params:
            if substring:
                where.append(f"{key} ILIKE {arg('%' + _like(params[key]) + '%')}")
            else:
                where.append(f"{key} = {arg(params[key])}")
    if substring and params.get("q"):
        pattern = arg("%" + _like(params["q"]) + "%")
        where.append(f"(name ILIKE {pattern} OR description ILIKE {pattern})")
    if "status" in params:
        if not params["status"].isdigit() or int(params["status"]) not in STATUSES:
            raise invalid("status must be an integer from 0 to 7")
        where.append(f"status = {arg(int(params['status']))}")
    if "run_frequency" in params:
        where.append(f"run_frequency = {arg(params['run_frequency'])}")
    rows = await request.app.state.pool.fetch(
        f"SELECT {_WORK_COLUMNS} FROM works WHERE {' AND '.join(where)} ORDER BY {_order(request)} "
        f"LIMIT {arg(limit)} OFFSET {arg(page * limit)}",
        *args,
    )
    return ok([work_view(r) for r in rows])


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def list_works(request: Request) -> Response:
    return await _list(request, substring=False)


async def search(request: Request) -> Response:
    return await _list(request, substring=True)


_TASK_SQL = """
SELECT t.task_id, t.work_id, t.job_id, t.reason, t.due_at, t.scheduled_at, t.skipped,
       j.state, j.started_at, j.finished_at, j.exit_code, j.answer_id, j.stderr_id, j.error
FROM work_tasks t LEFT JOIN jobs j ON j.job_id = t.job_id
"""


def task_view(row: asyncpg.Record, detail: bool = False) -> dict[str, Any]:
    state = "skipped" if row["skipped"] else (row["state"] or "queued")
    started, ended = row["started_at"], row["finished_at"]
    if started is not None:
        run_time = int(((ended or datetime.now(UTC)) - started).total_seconds())
    else:
        run_time = 0
    view: dict[str, Any] = {
        "task_id": row["task_id"], "work_id": row["work_id"], "status": TASK_STATUS[state],
        "started_at": ts(started), "ended_at": ts(ended), "run_time": run_time,
    }
    if detail:
        view |= {
            "state": state, "job_id": str(row["job_id"]), "reason": row["reason"], "due_at": ts(row["due_at"]),
            "scheduled_at": ts(row["scheduled_at"]), "exit_code": row["exit_code"],
            "error": row["skipped"] or row["error"],
            "output_url": f"/api/files/{row['answer_id']}" if row["answer_id"] else None,
            "stderr_url": f"/api/files/{row['stderr_id']}" if row["stderr_id"] else None,
        }
    return view


async def list_tasks(request: Request) -> Response:
    user = authenticate(request)
    work_id = parse_work_id(request.path_params["work_id"])
    limit, page = _page(request, {"limit", "offset"})
    await visible_work(request, user, work_id)
    rows = await request.app.state.pool.fetch(
        f"{_TASK_SQL} WHERE t.work_id = $1 ORDER BY t.scheduled_at DESC, t.task_id DESC LIMIT $2 OFFSET $3",
        work_id, limit, page * limit,
    )
    return ok([task_view(r) for r in rows])


async def _fetch_task(pool: asyncpg.Pool, work_id: str, task_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(f"{_TASK_SQL} WHERE t.work_id = $1 AND t.task_id = $2", work_id, task_id)  # type: ignore[no-any-return]


async def get_task(request: Request) -> Response:
    user = authenticate(request)
    work_id = parse_work_id(request.path_params["work_id"])
    try:
        task_id = uuid.UUID(request.path_params["task_id"]).hex
    except ValueError:
        raise invalid("task id is not 32 hex digits") from None
    await visible_work(request, user, work_id)
    state = request.app.state
    row = await state.watch.read(str(uuid.UUID(hex=task_id)), lambda: _fetch_task(state.pool, work_id, task_id))
    if row is None:
        raise WorkError(404101, 404, f"no task {task_id} of work {work_id}")
    return ok(task_view(row, detail=True))


async def run_now(request: Request) -> Response:
    user = authenticate(request)
    work_id = parse_work_id(request.path_params["work_id"])
    body = await request.body()
    if body.strip() not in (b"", b"{}"):
        raise invalid("run now takes no body")
    await visible_work(request, user, work_id)
    task_id = uuid.UUID(new_id()).hex
    command = RunWorkNow(command_id=new_id(), stream_id=work_id, issued_at=utcnow(), actor=user.user_id,
                         task_id=task_id)
    try:
        await request.app.state.bus.send(WORK_COMMANDS, work_id, encode(command))
    except BrokerUnavailable as exc:
        raise WorkError(503100, 503, f"the command was not accepted: {exc}") from exc
    pool = request.app.state.pool
    row = await request.app.state.watch.until(lambda: _fetch_task(pool, work_id, task_id), lambda r: r is not None)
    if row is None:
        return ok({"task_id": task_id, "work_id": work_id, "status": TASK_STATUS["queued"], "started_at": None,
                   "ended_at": None, "run_time": 0}, 201)
    return ok(task_view(row), 201)


async def backfill(request: Request) -> Response:
    user = authenticate(request)
    work_id = parse_work_id(request.path_params["work_id"])
    body = await read_json(request, 64 * 1024)
    if not isinstance(body, dict) or set(body) != {"start", "end"}:
        raise invalid("backfill takes {\"start\": time, \"end\": time} (ISO 8601)")
    try:
        start = datetime.fromisoformat(str(body["start"]).replace("Z", "+00:00"))
        end = datetime.fromisoformat(str(body["end"]).replace("Z", "+00:00"))
    except ValueError:
        raise invalid("start and end must be ISO 8601 times such as 2026-01-31T00:00:00Z") from None
    start, end = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (start, end))
    if end < start or end > utcnow():
        raise invalid("backfill needs start <= end <= now")
    row = await visible_work(request, user, work_id)
    parsed = schedule.parse(row["run_frequency"])
    if parsed is None or parsed.expression is None:
        raise WorkError(409100, 409, "only a recurring work (hourly, daily, weekly or cron) can be backfilled")
    dues = []
    for due in parsed.between(start, end):
        dues.append(due)
        if len(dues) > MAX_BACKFILL:
            raise invalid(f"the range holds more than {MAX_BACKFILL} due times")
    command = BackfillWork(command_id=new_id(), stream_id=work_id, issued_at=utcnow(), actor=user.user_id,
                           start=start, end=end)
    try:
        await request.app.state.bus.send(WORK_COMMANDS, work_id, encode(command))
    except BrokerUnavailable as exc:
        raise WorkError(503100, 503, f"the command was not accepted: {exc}") from exc
    return ok({"task_ids": [task_id_for(work_id, d, "backfill") for d in dues],
               "due_at": [ts(d) for d in dues]}, 202)


def _wrapped(endpoint: Any) -> Any:
    async def route(request: Request) -> Response:
        return await handle(request, endpoint)

    route.__name__ = endpoint.__name__
    return route


ROUTES = [
    Route("/api/v1/works", _wrapped(create), methods=["POST"]),
    Route("/api/v1/works", _wrapped(list_works), methods=["GET"]),
    Route("/api/v1/works/search", _wrapped(search), methods=["GET"]),
    Route("/api/v1/works/{work_id}", _wrapped(get), methods=["GET"]),
    Route("/api/v1/works/{work_id}", _wrapped(patch), methods=["PATCH"]),
    Route("/api/v1/works/{work_id}", _wrapped(delete), methods=["DELETE"]),
    Route("/api/v1/works/{work_id}/tasks", _wrapped(list_tasks), methods=["GET"]),
    Route("/api/v1/works/{work_id}/tasks", _wrapped(run_now), methods=["POST"]),
    Route("/api/v1/works/{work_id}/tasks/{task_id}", _wrapped(get_task), methods=["GET"]),
    Route("/api/v1/works/{work_id}/backfill", _wrapped(backfill), methods=["POST"]),
]
