"""The pipelines API (seed 002): store specs by name, call them at /p/{name}/..., see their runs.

    PUT    /api/pipelines/{name}        the JSON spec (parsed on save: a 400 points at the element)
    GET    /api/pipelines/{name}        GET /api/pipelines (list)      DELETE /api/pipelines/{name}
    ANY    /p/{name}[/{service path}]   runs it; OPTIONS answers at once; ?wait=false: 202 + run id
    GET    /api/pipeline_runs/{run_id}  the run's state and every step (request, status, timing, name); ?wait=S
    GET    /api/pipeline_runs           the caller's recent runs (admins: everyone's), newest first
    /json/..., /templates/..., /transform/..., /lib/...   the built-in services (services/pipelines/builtins.py)

Saving and deleting are commands to the spec agent (skyjobs.pipeline-commands), answered with its
decision. A call produces the run's first token on skyjobs.pipeline-work and waits for the run's
end event; the pipeline workers (`skyjobs pipelines`) do the rest. Specs are read from the API's
own copy of the spec events (services/api/pipeline_watch.py), run records from the projections.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from events.base import new_id, utcnow
from events.codec import encode
from events.files import FileStored
from events.pipelines import (
    Caller,
    ContinueRun,
    DeletePipeline,
    PipelineChangeRefused,
    PipelineDeleted,
    PipelineSaved,
    RunEnded,
    SavePipeline,
)
from events.topics import FILE_EVENTS, PIPELINE_COMMANDS, PIPELINE_WORK
from services.api.errors import (
    BadRequest,
    Forbidden,
    GatewayTimeout,
    NotFound,
    TooLarge,
    Unavailable,
    json_response,
)
from services.api.pipeline_watch import PipelineWatch, Stored
from services.api.requests import authenticate, read_json, wait_seconds
from services.blobs import LocalBlobStore
from services.config import Config
from services.kafka import BrokerUnavailable, CommandBus
from services.pipelines import builtins
from services.pipelines.errors import SpecError
from services.pipelines.flow import DEPTH_HEADER, Settings, root_token
from services.pipelines.messages import HOP_HEADERS, Message, error_message
from services.pipelines.settings import from_env
from services.pipelines.spec import parse
from services.pipelines.wire import Bodies

log = logging.getLogger(__name__)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_SPEC = 256 * 1024
DECISION_WAIT = 10.0  # how long PUT/DELETE wait for the spec agent before answering 202
_ANY = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


@dataclass
class PipelinesState:
    """What the pipeline endpoints hold for the life of the API process."""

    settings: Settings
    watch: PipelineWatch
    bodies: Bodies
    bus: CommandBus | None = None


def create_state(config: Config) -> PipelinesState:
    blobs = LocalBlobStore(config.blob_dir)
    state = PipelinesState(from_env(config), PipelineWatch(), Bodies(blobs, 0))

    async def publish(event: FileStored) -> None:
        assert state.bus is not None
        await state.bus.send(FILE_EVENTS, event.stream_id, encode(event))

    state.bodies = Bodies(blobs, state.settings.inline_limit, publish)
    return state


def _state(request: Request) -> PipelinesState:
    state: PipelinesState = request.app.state.pipelines
    if state.bus is None:
        state.bus = request.app.state.proxy.bus  # no linger: a run's start is latency-bound
    return state


def _documents(request: Request) -> builtins.DocumentStore:
    app_state = request.app.state
    store: builtins.DocumentStore | None = getattr(app_state, "documents", None)
    if store is None:
        store = builtins.PostgresStore(app_state.pool)
        app_state.documents = store
    return store


def _name(request: Request) -> str:
    name = str(request.path_params["name"])
    if not NAME.match(name):
        raise BadRequest(f"pipeline name {name[:80]!r} must be 1-128 letters, digits, '_', '.' or '-'")
    return name


def _ts(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _view(stored: Stored) -> dict[str, Any]:
    return {"name": stored.name, "spec": orjson.Fragment(stored.spec), "user_id": stored.user_id,
            "created_at": _ts(stored.created_at), "updated_at": _ts(stored.updated_at)}


async def _ready(state: PipelinesState, request: Request) -> None:
    """The API's copy of the specs has read every spec event written before it started."""
    caught_up = state.watch.caught_up
    if not caught_up.is_set():
        try:
            await asyncio.wait_for(caught_up.wait(), 30)
        except TimeoutError:
            raise Unavailable("the pipeline specs are still being read from Kafka; try again") from None


async def _decide(state: PipelinesState, name: str, command: SavePipeline | DeletePipeline) -> Any:
    assert state.bus is not None
    outcome = state.watch.expect_outcome(command.command_id)
    try:
        await state.bus.send(PIPELINE_COMMANDS, name, encode(command))
    except BrokerUnavailable as exc:
        state.watch.outcomes.pop(command.command_id, None)
        raise Unavailable(str(exc)) from None
    try:
        return await asyncio.wait_for(outcome, DECISION_WAIT)
    except TimeoutError:
        state.watch.outcomes.pop(command.command_id, None)
        return None


async def put_pipeline(request: Request) -> Response:
    user = authenticate(request)
    name = _name(request)
    spec = await read_json(request, MAX_SPEC)  # NUL refused there
    try:
        parse(spec)
    except SpecError as exc:
        raise BadRequest(exc.message, path=exc.path, reason=exc.reason) from None
    state = _state(request)
    await _ready(state, request)
    known = state.watch.lookup(name)
    if known is not None and known.user_id != user.user_id and not user.is_admin:
        raise Forbidden(f"pipeline {name!r} belongs to another user")
    command = SavePipeline(command_id=new_id(), stream_id=name, issued_at=utcnow(), actor=user.user_id, name=name,
                           spec=msgspec.Raw(orjson.dumps(spec)), user_id=user.user_id, admin=user.is_admin)
    outcome = await _decide(state, name, command)
    if outcome is None:
        return json_response({"name": name, "state": "accepted"}, 202)
    if isinstance(outcome, PipelineChangeRefused):
        raise Forbidden(f"pipeline {name!r} belongs to another user")
    assert isinstance(outcome, PipelineSaved)
    return json_response({"name": name, "spec": spec}, 201 if outcome.created else 200)


async def get_pipeline(request: Request) -> Response:
    authenticate(request)
    name = _name(request)
    state = _state(request)
    await _ready(state, request)
    stored = state.watch.lookup(name)
    if stored is None:
        raise NotFound(f"no pipeline {name!r}")
    return json_response(_view(stored))


async def delete_pipeline(request: Request) -> Response:
    user = authenticate(request)
    name = _name(request)
    state = _state(request)
    await _ready(state, request)
    stored = state.watch.lookup(name)
    if stored is None:
        raise NotFound(f"no pipeline {name!r}")
    if stored.user_id != user.user_id and not user.is_admin:
        raise Forbidden(f"pipeline {name!r} belongs to another user")
    command = DeletePipeline(command_id=new_id(), stream_id=name, issued_at=utcnow(), actor=user.user_id, name=name,
                             user_id=user.user_id, admin=user.is_admin)
    outcome = await _decide(state, name, command)
    if outcome is None:
        return json_response({"name": name, "state": "accepted"}, 202)
    if isinstance(outcome, PipelineChangeRefused):
        if outcome.reason == "missing":
            raise NotFound(f"no pipeline {name!r}")
        raise Forbidden(f"pipeline {name!r} belongs to another user")
    assert isinstance(outcome, PipelineDeleted)
    return json_response({"name": name})


async def list_pipelines(request: Request) -> Response:
    authenticate(request)
    state = _state(request)
    await _ready(state, request)
    stored = sorted(state.watch.specs.values(), key=lambda s: s.name)[:1000]
    return json_response({"pipelines": [_view(s) for s in stored]})


async def call_pipeline(request: Request) -> Response:
    """Any method at /p/{name}/...: the final message's status, headers and body."""
    if request.method == "OPTIONS":
        return Response(status_code=204, headers={"Allow": ", ".join(_ANY)})
    user = authenticate(request)
    name = _name(request)
    state = _state(request)
    await _ready(state, request)
    stored = state.watch.lookup(name)
    if stored is None:
        raise NotFound(f"no pipeline {name!r}")
    try:
        spec = stored.spec_tree()
    except SpecError as exc:  # saved under an older parser
        raise BadRequest(exc.message, path=exc.path) from None
    settings = state.settings
    body = await request.body()
    if len(body) > settings.max_body:
        raise TooLarge(f"the body is over the limit of {settings.max_body} bytes")
    depth_text = request.headers.get(DEPTH_HEADER, "0")
    depth = int(depth_text) if depth_text.isdigit() else 0
    if depth > settings.max_depth:
        return _answer(error_message(508, f"pipelines call each other more than {settings.max_depth} deep"), None)
    headers = {k.lower(): v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
    message = Message(headers={k: v for k, v in headers.items() if k == "content-type"}, body=body,
                      method=request.method)
    run_id = new_id()
    caller = Caller(method=request.method, base_path=f"/p/{name}", service_path=request.path_params.get("rest", ""),
                    query=[(k, v) for k, v in request.query_params.multi_items() if k != "wait"], headers=headers,
                    user_id=user.user_id, role=user.role, depth=depth)
    route = run_id if spec.concurrency else None
    base = {"pipeline": name, "spec": msgspec.Raw(stored.spec), "caller": caller,
            "deadline": time.time() + settings.run_timeout, "route": route, "label": f"pipeline-run-{run_id}"}
    try:
        token = await state.bodies.token_to_wire(root_token(spec, message, settings), base, user.user_id)
    except BrokerUnavailable as exc:
        raise Unavailable(str(exc)) from None
    wait = request.query_params.get("wait", "true").lower() not in ("false", "0", "no")
    ended = state.watch.expect_end(run_id) if wait else None
    command = ContinueRun(command_id=new_id(), stream_id=run_id, issued_at=utcnow(), actor=user.user_id,
                          correlation_id=run_id, token=token)
    assert state.bus is not None
    try:
        await state.bus.send(PIPELINE_WORK, route or f"{run_id}:{token.token_id}", encode(command))
    except BrokerUnavailable as exc:
        state.watch.ends.pop(run_id, None)
        raise Unavailable(str(exc)) from None
    if ended is None:
        return json_response({"run_id": run_id, "state": "running"}, 202, {"Location": f"/api/pipeline_runs/{run_id}"})
    try:
        event = await asyncio.wait_for(ended, settings.run_timeout + 5)
    except TimeoutError:
        state.watch.ends.pop(run_id, None)
        raise GatewayTimeout(f"the run did not end within {settings.run_timeout + 5:g} s (no pipeline worker "
                             "took it?)", run_id=run_id) from None
    return _answer(await _output(state, event), run_id)


async def _output(state: PipelinesState, event: RunEnded) -> Message:
    try:
        return await state.bodies.from_wire(event.output)
    except Exception as exc:
        log.warning("run %s: its answer could not be read: %r", event.stream_id, exc)
        return error_message(500, f"the run's answer could not be read: {exc}")


def _answer(result: Message, run_id: str | None) -> Response:
    out_headers = {k: v for k, v in result.headers.items() if k not in HOP_HEADERS and not k.startswith("x-skyjobs")}
    if run_id:
        out_headers["x-skyjobs-pipeline-run"] = run_id
    return Response(result.body, result.status, headers=out_headers)


_RUN = "SELECT * FROM pipeline_runs WHERE run_id = $1"
_STEPS = "SELECT * FROM pipeline_steps WHERE run_id = $1 ORDER BY requested_at NULLS LAST, step"


def _run_view(row: Any, steps: list[Any]) -> dict[str, Any]:
    return {
        "run_id": str(row["run_id"]), "pipeline": row["pipeline"], "user_id": row["user_id"], "state": row["state"],
        "status": row["status"], "method": row["method"], "path": row["path"], "query": row["query"],
        "error": row["error"], "fanouts": row["fanouts"], "joins": row["joins"],
        "started_at": _ts(row["started_at"]), "finished_at": _ts(row["finished_at"]),
        "steps": [{"path": s["element"], "method": s["method"], "url": s["url"], "status": s["status"],
                   "started_at": _ts(s["requested_at"]), "duration_ms": s["duration_ms"],
                   "output_name": s["output_name"], "error": s["error"], "retry": s["retry"],
                   "token_id": s["token_id"], "worker": s["worker"]} for s in steps],
    }


async def get_run(request: Request) -> Response:
    user = authenticate(request)
    raw = str(request.path_params["run_id"])
    try:
        run_id = str(uuid.UUID(raw))
    except ValueError:
        raise BadRequest(f"run id {raw[:80]!r} is not a UUID") from None
    wait = wait_seconds(request.query_params.get("wait"))
    pool = request.app.state.pool
    freshness = request.app.state.watch
    run_ends = _state(request).watch.run_ends
    ended_here = run_id.encode() in run_ends.ended

    async def fetch() -> tuple[Any, list[Any]] | None:
        row = await pool.fetchrow(_RUN, run_id)
        return (row, await pool.fetch(_STEPS, run_id)) if row is not None else None

    def settled(found: tuple[Any, list[Any]] | None) -> bool:
        if found is None:
            return False
        row, steps = found
        if ended_here and (row["finished_at"] is None or row["pipeline"] is None):
            return False  # this process saw the run end: show it ended
        return all(s["responded_at"] is not None for s in steps) or row["finished_at"] is None

    found = await fetch()
    if not settled(found) and (freshness.is_recent(run_id) or ended_here):
        found = await freshness.until(fetch, settled)
    if found is None:
        raise NotFound(f"no pipeline run {raw}")
    row, steps = found
    if row["user_id"] not in (None, user.user_id) and not user.is_admin:
        raise Forbidden("this run belongs to another user")
    if wait and row["finished_at"] is None:
        def ended(found: tuple[Any, list[Any]] | None) -> bool:  # steps' answers may come after the end (audit)
            return settled(found) and found is not None and found[0]["finished_at"] is not None \
                and found[0]["pipeline"] is not None

        found = await run_ends.until_finished(run_id, wait, fetch, ended, freshness) or found
        row, steps = found
    return json_response(_run_view(row, steps))


async def list_runs(request: Request) -> Response:
    user = authenticate(request)
    try:
        limit = max(1, min(100, int(request.query_params.get("limit", "20"))))
    except ValueError:
        raise BadRequest("limit must be a whole number from 1 to 100") from None
    pool = request.app.state.pool
    if user.is_admin:
        rows = await pool.fetch("SELECT * FROM pipeline_runs ORDER BY run_id DESC LIMIT $1", limit)
    else:
        rows = await pool.fetch("SELECT * FROM pipeline_runs WHERE user_id = $1 ORDER BY run_id DESC LIMIT $2",
                                user.user_id, limit)
    return json_response({"runs": [_run_view(r, []) for r in rows]})


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
    Route("/api/pipeline_runs", list_runs, methods=["GET"]),
    Route("/api/pipeline_runs/{run_id}", get_run, methods=["GET"]),
    Route("/p/{name}", call_pipeline, methods=_ANY),
    Route("/p/{name}/{rest:path}", call_pipeline, methods=_ANY),
    *[Route(r.path, _authenticated(r.endpoint), methods=sorted(r.methods or []))  # type: ignore[attr-defined]
      for r in builtins.ROUTES],
]

