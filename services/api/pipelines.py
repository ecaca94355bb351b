"""The pipelines API (seed 002): store specs by name, call them at /p/{name}/..., see their runs.

    PUT    /api/pipelines/{name}        the JSON spec (parsed on save: a 400 points at the element)
    GET    /api/pipelines/{name}        GET /api/pipelines (list)      DELETE /api/pipelines/{name}
    ANY    /p/{name}[/{service path}]   runs it; OPTIONS answers at once; ?wait=false: 202 + run id
    GET    /api/pipeline_runs/{run_id}  the run's state and every step (request, status, timing, name)
    /json/..., /templates/..., /transform/..., /lib/...   the built-in services (services/pipelines/builtins.py)

Runs execute in the API process with the in-process engine (services/pipelines/engine.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services.api.errors import BadRequest, Forbidden, NotFound, TooLarge, json_response
from services.api.requests import authenticate, read_json
from services.pipelines import builtins
from services.pipelines.engine import DEPTH_HEADER, Caller, Engine, HttpTransport, Run, Settings
from services.pipelines.errors import SpecError
from services.pipelines.messages import HOP_HEADERS, Message
from services.pipelines.spec import Spec, parse

log = logging.getLogger(__name__)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_SPEC = 256 * 1024
_ANY = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


def _engine(request: Request) -> Engine:
    state = request.app.state
    engine: Engine | None = getattr(state, "pipeline_engine", None)
    if engine is None:
        config = state.config
        settings = Settings(self_url=f"http://{config.host}:{config.port}")
        engine = Engine(HttpTransport(), settings)
        state.pipeline_engine = engine
        state.pipeline_runs = set()
    return engine


def _documents(request: Request) -> builtins.DocumentStore:
    state = request.app.state
    store: builtins.DocumentStore | None = getattr(state, "documents", None)
    if store is None:
        store = builtins.PostgresStore(state.pool)
        state.documents = store
    return store


def _name(request: Request) -> str:
    name = str(request.path_params["name"])
    if not NAME.match(name):
        raise BadRequest(f"pipeline name {name[:80]!r} must be 1-128 letters, digits, '_', '.' or '-'")
    return name


async def put_pipeline(request: Request) -> Response:
    user = authenticate(request)
    name = _name(request)
    spec = await read_json(request, MAX_SPEC)
    try:
        parse(spec)
    except SpecError as exc:
        raise BadRequest(exc.message, path=exc.path, reason=exc.reason) from None
    pool = request.app.state.pool
    row = await pool.fetchrow(
        "INSERT INTO pipelines (name, spec, user_id) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE "
        "SET spec = EXCLUDED.spec, updated_at = now() WHERE pipelines.user_id = EXCLUDED.user_id OR $4 "
        "RETURNING (xmax = 0) AS created", name, spec, user.user_id, user.is_admin)
    if row is None:
        raise Forbidden(f"pipeline {name!r} belongs to another user")
    return json_response({"name": name, "spec": spec}, 201 if row["created"] else 200)


async def get_pipeline(request: Request) -> Response:
    authenticate(request)
    name = _name(request)
    row = await request.app.state.pool.fetchrow("SELECT * FROM pipelines WHERE name = $1", name)
    if row is None:
        raise NotFound(f"no pipeline {name!r}")
    return json_response(_view(row))


def _view(row: Any) -> dict[str, Any]:
    return {"name": row["name"], "spec": row["spec"], "user_id": row["user_id"],
            "created_at": _ts(row["created_at"]), "updated_at": _ts(row["updated_at"])}


def _ts(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


async def delete_pipeline(request: Request) -> Response:
    user = authenticate(request)
    name = _name(request)
    row = await request.app.state.pool.fetchrow("SELECT user_id FROM pipelines WHERE name = $1", name)
    if row is None:
        raise NotFound(f"no pipeline {name!r}")
    if row["user_id"] != user.user_id and not user.is_admin:
        raise Forbidden(f"pipeline {name!r} belongs to another user")
    await request.app.state.pool.execute("DELETE FROM pipelines WHERE name = $1", name)
    return json_response({"name": name})


async def list_pipelines(request: Request) -> Response:
    authenticate(request)
    rows = await request.app.state.pool.fetch("SELECT * FROM pipelines ORDER BY name LIMIT 1000")
    return json_response({"pipelines": [_view(r) for r in rows]})


async def call_pipeline(request: Request) -> Response:
    """Any method at /p/{name}/...: the final message's status, headers and body."""
    if request.method == "OPTIONS":
        return Response(status_code=204, headers={"Allow": ", ".join(_ANY)})
    user = authenticate(request)
    name = _name(request)
    row = await request.app.state.pool.fetchrow("SELECT spec FROM pipelines WHERE name = $1", name)
    if row is None:
        raise NotFound(f"no pipeline {name!r}")
    try:
        spec = parse(row["spec"])
    except SpecError as exc:  # saved under an older parser
        raise BadRequest(exc.message, path=exc.path) from None
    engine = _engine(request)
    body = await request.body()
    if len(body) > engine.settings.max_body:
        raise TooLarge(f"the body is over the limit of {engine.settings.max_body} bytes")
    headers = {k.lower(): v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
    message = Message(headers={k: v for k, v in headers.items() if k == "content-type"}, body=body,
                      method=request.method)
    depth_text = request.headers.get(DEPTH_HEADER, "0")
    caller = Caller(request.method, f"/p/{name}", request.path_params.get("rest", ""),
                    tuple((k, v) for k, v in request.query_params.multi_items() if k != "wait"), headers,
                    {"user_id": user.user_id, "role": user.role}, int(depth_text) if depth_text.isdigit() else 0)
    run_id = str(uuid.uuid4())
    run = Run(spec, caller, run_id)
    pool = request.app.state.pool
    await pool.execute("INSERT INTO pipeline_runs (run_id, pipeline, user_id, state, method, path) "
                       "VALUES ($1, $2, $3, 'running', $4, $5)", run_id, name, user.user_id, request.method,
                       request.url.path)
    if request.query_params.get("wait", "true").lower() in ("false", "0", "no"):
        task = asyncio.ensure_future(_execute(engine, pool, spec, message, caller, run))
        request.app.state.pipeline_runs.add(task)
        task.add_done_callback(request.app.state.pipeline_runs.discard)
        return json_response({"run_id": run_id, "state": "running"}, 202, {"Location": f"/api/pipeline_runs/{run_id}"})
    result = await _execute(engine, pool, spec, message, caller, run)
    out_headers = {k: v for k, v in result.headers.items() if k not in HOP_HEADERS and not k.startswith("x-skyjobs")}
    out_headers["x-skyjobs-pipeline-run"] = run_id
    return Response(result.body, result.status, headers=out_headers)


async def _execute(engine: Engine, pool: Any, spec: Spec, message: Message, caller: Caller, run: Run) -> Message:
    try:
        result = await engine.run(spec, message, caller, run)
    except Exception as exc:  # the run record must never stay "running"
        log.exception("pipeline run %s crashed", run.run_id)
        result = Message(status=500, body=orjson.dumps({"error": f"internal error: {exc.__class__.__name__}"}),
                         headers={"content-type": "application/json"})
    state = "succeeded" if result.status < 400 else "failed"
    steps = [asdict(s) for s in run.steps]
    error = result.error_message()[:1000] if result.status >= 400 else None
    await pool.execute("UPDATE pipeline_runs SET state = $2, status = $3, steps = $4, error = $5, finished_at = now() "
                       "WHERE run_id = $1", run.run_id, state, result.status, steps, error)
    return result


async def get_run(request: Request) -> Response:
    user = authenticate(request)
    raw = str(request.path_params["run_id"])
    try:
        run_id = uuid.UUID(raw)
    except ValueError:
        raise BadRequest(f"run id {raw[:80]!r} is not a UUID") from None
    row = await request.app.state.pool.fetchrow("SELECT * FROM pipeline_runs WHERE run_id = $1", run_id)
    if row is None:
        raise NotFound(f"no pipeline run {raw}")
    if row["user_id"] != user.user_id and not user.is_admin:
        raise Forbidden("this run belongs to another user")
    steps = [{**s, "started_at": datetime.fromtimestamp(s["started_at"], UTC).isoformat().replace("+00:00", "Z")}
             for s in row["steps"]]
    return json_response({
        "run_id": str(row["run_id"]), "pipeline": row["pipeline"], "state": row["state"], "status": row["status"],
        "method": row["method"], "path": row["path"], "error": row["error"], "steps": steps,
        "started_at": _ts(row["started_at"]), "finished_at": _ts(row["finished_at"]),
    })


def _authenticated(endpoint: Any) -> Any:
    async def wrapped(request: Request) -> Response:
        authenticate(request)
        _documents(request)
        response: Response = await endpoint(request)
        return response

    return wrapped


ROUTES: list[BaseRoute] = [
    Route("/api/pipelines", list_pipelines, methods=["GET"]),
    Route("/api/pipelines/{name}", get_pipeline, methods=["GET"]),
    Route("/api/pipelines/{name}", put_pipeline, methods=["PUT"]),
    Route("/api/pipelines/{name}", delete_pipeline, methods=["DELETE"]),
    Route("/api/pipeline_runs/{run_id}", get_run, methods=["GET"]),
    Route("/p/{name}", call_pipeline, methods=_ANY),
    Route("/p/{name}/{rest:path}", call_pipeline, methods=_ANY),
    *[Route(r.path, _authenticated(r.endpoint), methods=sorted(r.methods or []))  # type: ignore[attr-defined]
      for r in builtins.ROUTES],
]
