"""The built-in services the seed's examples lean on, as Starlette routes:

    /json/...        a JSON document store (GET, PUT, POST, DELETE; GET of a path ending in / lists it)
    /templates/...   GET the template, PUT writes it, POST data renders it (sandboxed Jinja2)
    /transform/...   GET the transformation, PUT writes it, POST data applies it
    /lib/bypass      answers with the request as it came; /lib/devnull 204; /lib/to-text text/plain

Documents live behind the `DocumentStore` protocol: Postgres in the API (`PostgresStore`, a plain
table: the store is data the pipelines own, not an event stream), a dict in unit tests.
"""

from __future__ import annotations

from typing import Any, Protocol

import asyncpg
import orjson
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services.pipelines.errors import ExpressionError
from services.pipelines.expressions import Budget
from services.pipelines.transform import TransformContext, transform
from services.pipelines.urls import UrlContext

MAX_DOCUMENT = 4 * 1024**2
MAX_KEY = 1024


class DocumentStore(Protocol):
    async def get(self, key: str) -> tuple[bytes, str] | None: ...
    async def put(self, key: str, body: bytes, content_type: str) -> bool: ...  # True: created
    async def delete(self, key: str) -> bool: ...
    async def list(self, prefix: str) -> list[str]: ...


class MemoryStore:
    def __init__(self) -> None:
        self.docs: dict[str, tuple[bytes, str]] = {}

    async def get(self, key: str) -> tuple[bytes, str] | None:
        return self.docs.get(key)

    async def put(self, key: str, body: bytes, content_type: str) -> bool:
        created = key not in self.docs
        self.docs[key] = (body, content_type)
        return created

    async def delete(self, key: str) -> bool:
        return self.docs.pop(key, None) is not None

    async def list(self, prefix: str) -> list[str]:
        return sorted(k[len(prefix):] for k in self.docs if k.startswith(prefix))


class PostgresStore:
    """Documents in the `pipeline_documents` table (projections/sql/010_pipelines.sql)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def get(self, key: str) -> tuple[bytes, str] | None:
        row = await self.pool.fetchrow("SELECT body, content_type FROM pipeline_documents WHERE key = $1", key)
        return (bytes(row["body"]), str(row["content_type"])) if row else None

    async def put(self, key: str, body: bytes, content_type: str) -> bool:
        created: bool = await self.pool.fetchval(
            "INSERT INTO pipeline_documents (key, body, content_type) VALUES ($1, $2, $3) "
            "ON CONFLICT (key) DO UPDATE SET body = EXCLUDED.body, content_type = EXCLUDED.content_type, "
            "updated_at = now() RETURNING (xmax = 0)", key, body, content_type)
        return created

    async def delete(self, key: str) -> bool:
        return await self.pool.fetchval("DELETE FROM pipeline_documents WHERE key = $1 RETURNING true", key) is not None

    async def list(self, prefix: str) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT key FROM pipeline_documents WHERE key LIKE $1 ESCAPE '\\' ORDER BY key LIMIT 1000",
            prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        return [r["key"][len(prefix):] for r in rows]


def _error(status: int, text: str) -> Response:
    return Response(orjson.dumps({"error": text}), status, media_type="application/json")


def _key(request: Request, area: str) -> str:
    path = request.path_params.get("path", "")
    if len(path) > MAX_KEY or "\x00" in path:
        raise ValueError("bad key")
    return f"{area}/{path}"


async def _body(request: Request) -> bytes | None:
    body = await request.body()
    return None if len(body) > MAX_DOCUMENT else body


def _store(request: Request) -> DocumentStore:
    store: DocumentStore = request.app.state.documents
    return store


async def json_store(request: Request) -> Response:
    try:
        key = _key(request, "json")
    except ValueError:
        return _error(400, "bad document path")
    store = _store(request)
    if request.method == "GET":
        if key.endswith("/"):
            return Response(orjson.dumps(await store.list(key)), media_type="application/json")
        found = await store.get(key)
        if found is None:
            return _error(404, f"no document at /{key}")
        return Response(found[0], media_type=found[1])
    if request.method == "DELETE":
        if not await store.delete(key):
            return _error(404, f"no document at /{key}")
        return Response(status_code=204)
    body = await _body(request)
    if body is None:
        return _error(413, f"a document is limited to {MAX_DOCUMENT} bytes")
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return _error(400, "the JSON store keeps JSON: the body is not valid JSON")
    if key.endswith("/"):
        return _error(400, "a document path may not end with /")
    created = await store.put(key, body, "application/json")
    return Response(body, 201 if created else 200, media_type="application/json")


_jinja = ImmutableSandboxedEnvironment(autoescape=True)


async def templates(request: Request) -> Response:
    return await _transformer(request, "templates", _render)


async def transforms(request: Request) -> Response:
    return await _transformer(request, "transform", _apply_transform)


def _render(source: bytes, data: Any, request: Request) -> Response:
    try:
        template = _jinja.from_string(source.decode("utf-8", errors="replace"))
        context = data if isinstance(data, dict) else {"data": data}
        text = template.render(**{k: v for k, v in context.items() if isinstance(k, str)}, data=data)
    except (TemplateError, TypeError, ValueError, RecursionError) as exc:
        return _error(400, f"template failed: {exc}")
    if len(text) > MAX_DOCUMENT:
        return _error(413, "the rendered template is too large")
    ctype = "text/html" if request.path_params.get("path", "").endswith((".html", ".htm")) else "text/plain"
    return Response(text, media_type=f"{ctype}; charset=utf-8")


def _apply_transform(source: bytes, data: Any, request: Request) -> Response:
    try:
        spec = orjson.loads(source)
        result = transform(spec, data, TransformContext(UrlContext(), "", {}, Budget()))
    except orjson.JSONDecodeError:
        return _error(500, "the stored transformation is not JSON")
    except ExpressionError as exc:
        return _error(400, exc.message)
    return Response(orjson.dumps(result), media_type="application/json")


async def _transformer(request: Request, area: str, apply: Any) -> Response:
    try:
        key = _key(request, area)
    except ValueError:
        return _error(400, "bad path")
    store = _store(request)
    if request.method == "GET":
        found = await store.get(key)
        return Response(found[0], media_type=found[1]) if found else _error(404, f"no {area} at /{key}")
    if request.method == "DELETE":
        return Response(status_code=204) if await store.delete(key) else _error(404, f"no {area} at /{key}")
    body = await _body(request)
    if body is None:
        return _error(413, f"limited to {MAX_DOCUMENT} bytes")
    if request.method == "PUT":
        if area == "transform":
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError:
                return _error(400, "a transformation is JSON")
        created = await store.put(key, body, "application/json" if area == "transform" else "text/plain")
        return Response(status_code=201 if created else 204)
    found = await store.get(key)
    if found is None:
        return _error(404, f"no {area} at /{key}")
    try:
        data = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError:
        data = body.decode("utf-8", errors="replace")
    return apply(found[0], data, request)  # type: ignore[no-any-return]


async def lib(request: Request) -> Response:
    name = request.path_params["name"]
    body = await request.body()
    if name == "bypass":
        return Response(body, media_type=request.headers.get("content-type"))
    if name == "devnull":
        return Response(status_code=204)
    if name == "to-text":
        return Response(body.decode("utf-8", errors="replace"), media_type="text/plain; charset=utf-8")
    return _error(404, f"no library service {name!r} (bypass, devnull, to-text)")


_ALL = ["GET", "POST", "PUT", "DELETE", "PATCH"]
ROUTES: list[BaseRoute] = [
    Route("/json/{path:path}", json_store, methods=["GET", "PUT", "POST", "DELETE"]),
    Route("/templates/{path:path}", templates, methods=["GET", "PUT", "POST", "DELETE"]),
    Route("/transform/{path:path}", transforms, methods=["GET", "PUT", "POST", "DELETE"]),
    Route("/lib/{name}", lib, methods=_ALL),
]
