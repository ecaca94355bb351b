"""Audit: the ordered event history of any entity, and a filtered search across the whole log.

Both read the `event_log` projection. Users see the events of the streams they own; admins all.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api.errors import BadRequest, Forbidden, NotFound, json_response
from services.api.requests import authenticate

KINDS = ("job", "file", "work", "task", "service", "pipeline")
MAX_LIMIT = 1000
_COLUMNS = ('topic, partition, "offset", kind, stream_id, type, sequence, occurred_at, actor, owner, event_id, '
            "correlation_id, causation_id, data")


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "type": row["type"], "kind": row["kind"], "stream_id": row["stream_id"], "sequence": row["sequence"],
        "occurred_at": _iso(row["occurred_at"]), "actor": row["actor"], "event_id": row["event_id"],
        "correlation_id": row["correlation_id"], "causation_id": row["causation_id"], "data": row["data"],
        "position": f"{row['topic']}:{row['partition']}:{row['offset']}",
    }


def _ids(kind: str, raw: str) -> list[str]:
    """The stream ids an entity may appear under (dashed and 32-hex spellings of a UUID)."""
    try:
        parsed = uuid.UUID(raw)
    except ValueError:
        if kind == "service" or kind == "pipeline":
            return [raw]
        raise BadRequest(f"{kind} id {raw[:80]!r} is not a UUID") from None
    return [str(parsed), parsed.hex]


async def entity_history(request: Request) -> Response:
    user = authenticate(request)
    kind = request.path_params["kind"]
    if kind not in KINDS:
        raise BadRequest(f"kind must be one of {', '.join(KINDS)}")
    ids = _ids(kind, request.path_params["entity_id"])
    pool = request.app.state.pool
    if kind == "task":  # a work's task: its job's events and the work events that name it
        rows = await pool.fetch(
            f"SELECT {_COLUMNS} FROM event_log WHERE (kind = 'job' AND stream_id = ANY($1)) "
            "OR (data ? 'task_id' AND data ->> 'task_id' = ANY($1)) OR (kind = 'task' AND stream_id = ANY($1)) "
            "ORDER BY occurred_at, topic, partition, \"offset\" LIMIT 10000", ids)
    else:
        rows = await pool.fetch(
            f"SELECT {_COLUMNS} FROM event_log WHERE kind = $1 AND stream_id = ANY($2) "
            "ORDER BY occurred_at, sequence, topic, partition, \"offset\" LIMIT 10000", kind, ids)
    if not rows:
        raise NotFound(f"no events of {kind} {request.path_params['entity_id']}")
    owners = {r["owner"] for r in rows if r["owner"]}
    if not user.is_admin and owners != {user.user_id}:
        raise Forbidden(f"{kind} {request.path_params['entity_id']} belongs to another user")
    return json_response({"kind": kind, "id": request.path_params["entity_id"],
                          "events": [event_view(r) for r in rows]})


SEARCH_PARAMS = {"kind", "type", "user", "since", "until", "limit", "cursor", "correlation_id"}


def _time(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def search(request: Request) -> Response:
    user = authenticate(request)
    params = request.query_params
    unknown = sorted(set(params) - SEARCH_PARAMS)
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r}; allowed: {', '.join(sorted(SEARCH_PARAMS))}")
    where: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    owner = params.get("user")
    if not user.is_admin:
        if owner not in (None, user.user_id):
            raise Forbidden("only an admin may search another user's events")
        owner = user.user_id
    if owner is not None:
        where.append(f"owner = {arg(owner)}")
    if "kind" in params:
        if params["kind"] not in KINDS:
            raise BadRequest(f"kind must be one of {', '.join(KINDS)}")
        where.append(f"kind = {arg(params['kind'])}")
    if "type" in params:
        where.append(f"type = {arg(params['type'])}")
    if "correlation_id" in params:
        where.append(f"correlation_id = {arg(params['correlation_id'])}")
    if "since" in params:
        where.append(f"occurred_at >= {arg(_time(params['since'], 'since'))}")
    if "until" in params:
        where.append(f"occurred_at < {arg(_time(params['until'], 'until'))}")
    raw_limit = params.get("limit", "100")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    limit = int(raw_limit)
    if "cursor" in params:
        try:
            at, topic, partition, offset = orjson.loads(base64.urlsafe_b64decode(params["cursor"] + "==="))
            key = (datetime.fromisoformat(at), str(topic), int(partition), int(offset))
        except (ValueError, TypeError):
            raise BadRequest("cursor is not one that this search returned") from None
        where.append(f'(occurred_at, topic, partition, "offset") > ({arg(key[0])}, {arg(key[1])}, '
                     f"{arg(key[2])}, {arg(key[3])})")
    sql = (f"SELECT {_COLUMNS} FROM event_log {'WHERE ' + ' AND '.join(where) if where else ''} "
           f'ORDER BY occurred_at, topic, partition, "offset" LIMIT {arg(limit + 1)}')
    rows = await request.app.state.pool.fetch(sql, *args)
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = None
    if more:
        last = rows[-1]
        cursor = base64.urlsafe_b64encode(orjson.dumps(
            [last["occurred_at"].isoformat(), last["topic"], last["partition"], last["offset"]])).decode().rstrip("=")
    return json_response({"events": [event_view(r) for r in rows], "next_cursor": cursor})


ROUTES = [
    Route("/api/history", search, methods=["GET"]),
    Route("/api/history/{kind}/{entity_id}", entity_history, methods=["GET"]),
]
