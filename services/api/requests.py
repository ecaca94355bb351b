"""Reading requests: the bearer token, JSON bodies (lenient only about a trailing comma) and ids."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
from starlette.requests import Request

from services.api.errors import BadRequest, Unauthorized
from services.config import User

# A JSON string, or a comma followed only by white space and a closing bracket.
_TRAILING_COMMA = re.compile(r'("(?:[^"\\]|\\.)*")|,(\s*[}\]])')


def authenticate(request: Request, allow_query_token: bool = False) -> User:
    header = request.headers.get("authorization", "")
    if not header and allow_query_token and "access_token" in request.query_params:
        header = f"Bearer {request.query_params['access_token']}"
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    user: User | None = request.app.state.config.tokens.get(token.strip())
    if user is None:
        raise Unauthorized("unknown bearer token")
    return user


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON whatever the Content-Type says (curl --data sends a form type)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"body of {declared} bytes is over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(f"body is over the limit of {limit} bytes")
    if not body.strip():
        raise BadRequest("body is empty: expected a JSON object")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as first:
        try:
            text = body.decode()
        except UnicodeDecodeError:
            raise BadRequest("body is not UTF-8 JSON") from None
        relaxed = _TRAILING_COMMA.sub(lambda m: m.group(1) or m.group(2), text)
        try:
            value = orjson.loads(relaxed)
        except orjson.JSONDecodeError:
            raise BadRequest(f"body is not valid JSON: {first}") from None
    if _has_nul(value):  # it would reach the events, which Postgres keeps (neither text nor jsonb holds it)
        raise BadRequest("JSON strings may not contain NUL characters (\\u0000)")
    return value


def _has_nul(value: Any) -> bool:
    """Whether a string of the document holds NUL (a loop, not recursion: JSON may nest 1,024 deep)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_uuid(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a UUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadRequest(f"{what} {value[:80]!r} is not a UUID") from None


def only_fields(body: Any, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(body))
    if missing:
        raise BadRequest(f"missing required field {missing[0]!r}")
    return body


MAX_WAIT = 60.0  # seconds a `?wait=` read may wait for an end


def wait_seconds(value: str | None) -> float:
    """The `wait` query parameter of a read that may wait for an end: 0 (absent) to MAX_WAIT seconds."""
    if value is None:
        return 0.0
    try:
        wait = float(value)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= MAX_WAIT:  # also NaN
        raise BadRequest(f"wait must be a number of seconds from 0 to {MAX_WAIT:g}, not {value[:40]!r}")
    return wait
