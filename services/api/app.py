"""The Starlette application: routes, error mapping and the shared resources of its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from events.topics import FILE_EVENTS, JOB_EVENTS, PIPELINE_STEPS, SERVICE_EVENTS, WORK_EVENTS
from projections.runner import PROJECTIONS
from services import db
from services.api import files, history, jobs, metrics, pipelines, proxy, stream, works
from services.api.end_watch import JOB_ENDS, EndWatch
from services.api.errors import ApiError, BadRequest, MethodNotAllowed, NotFound, json_response
from services.api.freshness import ProjectionWatch
from services.api.openapi import DOCUMENT
from services.api.tail import EventTail
from services.blobs import LocalBlobStore
from services.config import Config
from services.kafka import CommandBus

log = logging.getLogger(__name__)


DASHBOARD = (Path(__file__).parent / "dashboard.html").read_bytes()


async def dashboard(request: Request) -> Response:
    """The live dashboard (it asks for a token and calls the API from the browser)."""
    return Response(DASHBOARD, media_type="text/html; charset=utf-8")


async def openapi(request: Request) -> Response:
    return json_response(DOCUMENT)


async def health(request: Request) -> Response:
    await request.app.state.pool.fetchval("SELECT 1")
    return json_response({"status": "ok"})


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


def _answer(request: Request, error: ApiError) -> Response:
    """The error in the envelope of the API its path is in: seed 003's under /api/v1/, seed 001's elsewhere."""
    return works.envelope(error) if request.url.path.startswith("/api/v1/") else error.response()


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _answer(request, NotFound(f"no route {request.url.path}"))
    if exc.status_code == 405:
        return _answer(request, MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
    error = ApiError(str(exc.detail))
    error.status = exc.status_code
    return _answer(request, error)


async def on_bad_text(request: Request, exc: Exception) -> Response:
    """Text Postgres cannot hold (NUL) in a query parameter: the query failed, nothing changed."""
    return _answer(request, BadRequest("text may not contain NUL characters (%00)"))


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _answer(request, ApiError("internal error"))


def create_app(config: Config) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        app.state.config = config
        app.state.blobs = LocalBlobStore(config.blob_dir)
        app.state.pool = await db.create_pool(config.database_url, max_size=20)
        app.state.watch = ProjectionWatch(config.database_url, config.read_your_writes_wait)
        await app.state.watch.start()
        app.state.bus = CommandBus(config.kafka_bootstrap, config.kafka_timeout)
        await app.state.bus.start()
        # One tail of the event topics per process: live streams, the proxy's answers, job_info?wait.
        # The topics only the live streams read are read while someone streams.
        app.state.tail = EventTail(config.kafka_bootstrap, tuple(p.TOPIC for p in PROJECTIONS),
                                   (PIPELINE_STEPS, FILE_EVENTS, WORK_EVENTS, SERVICE_EVENTS))
        await app.state.tail.start()
        app.state.fanout = stream.Fanout(app.state.tail, app.state.pool)
        app.state.fanout.start()
        app.state.job_ends = EndWatch(JOB_EVENTS, JOB_ENDS)
        unfollow = app.state.tail.follow(app.state.job_ends.on_batch)
        app.state.proxy = await proxy.start(config, app.state.tail)
        app.state.pipelines = pipelines.create_state(config)
        app.state.pipelines.watch.attach(app.state.tail, config.kafka_bootstrap)
        expiring = asyncio.ensure_future(jobs.expire_idempotency_keys_forever(app.state.pool, config.idempotency_ttl))
        try:
            yield
        finally:
            expiring.cancel()
            app.state.pipelines.watch.detach()
            unfollow()
            await proxy.stop(app.state.proxy)
            await app.state.fanout.stop()
            await app.state.tail.stop()
            await app.state.bus.stop()
            await app.state.watch.stop()
            await app.state.pool.close()

    routes = [
        Route("/api/job/run", jobs.run, methods=["POST"]),
        Route("/api/job/job_info/{job_id}", jobs.job_info, methods=["GET"]),
        Route("/api/job/list_jobs", jobs.list_jobs, methods=["GET"]),
        Route("/api/list_jobs", jobs.list_jobs, methods=["GET"]),
        Route("/api/job/cancel", jobs.cancel, methods=["POST"]),
        Route("/api/job/delete", jobs.delete, methods=["DELETE"]),
        Route("/api/files", files.upload, methods=["POST"]),
        Route("/api/files/{file_id}", files.download, methods=["GET"]),
        *proxy.ROUTES,
        *works.ROUTES,
        *pipelines.ROUTES,
        *history.ROUTES,
        *stream.ROUTES,
        *metrics.ROUTES,
        Route("/", dashboard, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_error,
                            asyncpg.CharacterNotInRepertoireError: on_bad_text, Exception: on_unexpected},
    )
