"""Seed 004's proxy API: the service registry, add_task and task_info.

    GET    /services_list              every service with a registered instance (any user)
    GET    /service_info/{id}          its description and arguments (any user)
    POST   /add_task                   run a task on the service; ?wait=false, ?timeout=seconds
    GET    /task_info/{task_id}        a task's state and answer (its owner or an admin)
    GET    /services                   the registered instances (admin)
    POST   /services                   register an instance by URL (admin)
    DELETE /services/{instance_id}     remove an instance (admin)

Registry reads come from the `services` projection, except add_task's hot path, which reads the
registry folded from Kafka by this process (`RegistryView`) and waits for answers on the process's
tail of the event topics (`TaskWatch`, following `tail.EventTail`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from events.base import new_id, utcnow
from events.codec import encode
from events.files import FileStored
from events.services import REGISTRY_STREAM, RegisterInstance, RemoveInstance
from events.tasks import EXPIRED, NO_INSTANCE, REJECTED, TaskFailed, TaskSubmitted
from events.topics import FILE_EVENTS, SERVICE_COMMANDS, TASK_EVENTS
from projections.tasks import COLUMNS as TASK_COLUMNS
from projections.tasks import from_record as task_from_record
from services.api.errors import (
    ApiError,
    BadGateway,
    BadRequest,
    Forbidden,
    GatewayTimeout,
    NotFound,
    TooLarge,
    TooManyRequests,
    Unavailable,
    Unprocessable,
    json_response,
)
from services.api.requests import authenticate, only_fields, parse_uuid, read_json
from services.api.tail import EventTail
from services.api.task_watch import Ending, TaskWatch
from services.config import Config, User
from services.kafka import BrokerUnavailable, CommandBus
from services.proxy import tasks as task_fold
from services.proxy.arguments import ArgumentError, FileArg, check
from services.proxy.instances import InstanceClient, InstanceUnreachable, InvalidDescription, normalize_url
from services.proxy.registry import Service
from services.proxy.tasks import PENDING, Task
from services.proxy.view import RegistryView

MAX_EVENT = 900 * 1024  # Kafka's default message limit is 1 MiB
MAX_SERVICE_ID = 2**31 - 1
ADD_TASK_PARAMS = {"wait", "timeout"}


@dataclass
class ProxyState:
    """What the proxy endpoints hold for the life of the API process."""

    view: RegistryView
    tasks: TaskWatch
    client: InstanceClient
    bus: CommandBus  # tasks only: no linger (the job API's bus waits 1 ms to batch; add_task is latency-bound)


async def start(config: Config, tail: EventTail) -> ProxyState:
    """The proxy's parts; `tail` (started) is the process's tail of the event topics."""
    state = ProxyState(RegistryView(config.kafka_bootstrap), TaskWatch(), InstanceClient(),
                       CommandBus(config.kafka_bootstrap, config.kafka_timeout, linger_ms=0))
    await state.view.start()
    state.tasks.attach(tail)
    await state.bus.start()
    return state


async def stop(state: ProxyState) -> None:
    await state.bus.stop()
    await state.client.close()
    state.tasks.detach()
    await state.view.stop()


def _proxy(request: Request) -> ProxyState:
    state: ProxyState = request.app.state.proxy
    return state


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _admin(request: Request) -> User:
    user = authenticate(request)
    if not user.is_admin:
        raise Forbidden("only an admin may register or remove worker service instances")
    return user


async def _send(request: Request, topic: str, key: str, value: bytes) -> None:
    try:
        await request.app.state.bus.send(topic, key, value)
    except BrokerUnavailable as exc:
        raise Unavailable(f"not accepted: {exc}") from exc


# --- the registry -----------------------------------------------------------------------------------

_LIVE = "SELECT 1 FROM service_instances i WHERE i.service_id = s.service_id AND i.removed_at IS NULL"


async def services_list(request: Request) -> Response:
    authenticate(request)
    rows = await request.app.state.pool.fetch(
        f"SELECT s.service_id, s.name FROM services s WHERE EXISTS ({_LIVE}) ORDER BY s.service_id"
    )
    return json_response([{"service_id": r["service_id"], "service_name": r["name"]} for r in rows])


def _service_id(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit():
        raise BadRequest(f"service id {raw[:40]!r} must be a non-negative integer")
    return int(raw)


async def service_info(request: Request) -> Response:
    authenticate(request)
    service_id = _service_id(request.path_params["service_id"])
    row = None
    if service_id <= MAX_SERVICE_ID:
        row = await request.app.state.pool.fetchrow(
            f"SELECT s.service_id, s.name, s.description, s.arguments FROM services s "
            f"WHERE s.service_id = $1 AND EXISTS ({_LIVE})",
            service_id,
        )
    if row is None:
        raise NotFound(f"no service {service_id}")
    return json_response({
        "service_id": row["service_id"],
        "service_name": row["name"],
        "service_description": row["description"],
        "arguments": [{"argument_name": a["argument_name"], "argument_description": a["argument_description"],
                       "type": a["type"]} for a in row["arguments"]],
    })


_INSTANCE_SELECT = (
    "SELECT i.instance_id, i.url, i.service_id, i.name, i.state, i.reason, i.task_path, i.max_concurrency, "
    "i.registered_at, i.changed_at FROM service_instances i"
)


def _instance_view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "instance_id": str(row["instance_id"]), "url": row["url"], "service_id": row["service_id"],
        "service_name": row["name"], "state": row["state"], "reason": row["reason"],
        "task_path": row["task_path"], "max_concurrency": row["max_concurrency"],
        "registered_at": _iso(row["registered_at"]), "changed_at": _iso(row["changed_at"]),
    }


async def list_instances(request: Request) -> Response:
    _admin(request)
    rows = await request.app.state.pool.fetch(
        f"{_INSTANCE_SELECT} WHERE i.removed_at IS NULL ORDER BY i.service_id, i.registered_at"
    )
    return json_response({"instances": [_instance_view(r) for r in rows]})


async def register(request: Request) -> Response:
    user = _admin(request)
    config: Config = request.app.state.config
    body = only_fields(await read_json(request, config.max_json_body), {"url"}, {"url"})
    try:
        url = normalize_url(body["url"], config.proxy.allowed_hosts)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    pool = request.app.state.pool

    async def by_url() -> asyncpg.Record | None:
        row: asyncpg.Record | None = await pool.fetchrow(
            f"{_INSTANCE_SELECT} WHERE i.url = $1 AND i.removed_at IS NULL", url)
        return row

    existing = await by_url()
    if existing is not None:
        return json_response(_instance_view(existing))
    try:
        description = await _proxy(request).client.describe(url, config.proxy.probe_timeout)
    except InstanceUnreachable as exc:
        raise BadRequest(f"could not read the instance's /me: {exc}") from None
    except InvalidDescription as exc:
        raise BadRequest(f"the instance's {exc}") from None
    instance_id = new_id()
    command = RegisterInstance(command_id=new_id(), stream_id=REGISTRY_STREAM, issued_at=utcnow(),
                               actor=user.user_id, instance_id=instance_id, url=url, description=description)
    await _send(request, SERVICE_COMMANDS, REGISTRY_STREAM, encode(command))
    row = await request.app.state.watch.until(by_url, lambda r: r is not None and r["service_id"] is not None)
    if row is None:  # the router has not taken it yet (is it running?): it will
        return json_response({"instance_id": instance_id, "url": url, "state": "pending"}, 202)
    return json_response(_instance_view(row), 201 if str(row["instance_id"]) == instance_id else 200)


async def remove(request: Request) -> Response:
    user = _admin(request)
    instance_id = parse_uuid(request.path_params["instance_id"], "instance_id")
    pool = request.app.state.pool

    async def fetch() -> asyncpg.Record | None:
        row: asyncpg.Record | None = await pool.fetchrow(f"{_INSTANCE_SELECT} WHERE i.instance_id = $1", instance_id)
        return row

    row = await fetch()
    if row is None or row["state"] == "removed":
        raise NotFound(f"no registered instance {instance_id}")
    command = RemoveInstance(command_id=new_id(), stream_id=REGISTRY_STREAM, issued_at=utcnow(),
                             actor=user.user_id, instance_id=instance_id)
    await _send(request, SERVICE_COMMANDS, REGISTRY_STREAM, encode(command))
    await request.app.state.watch.until(fetch, lambda r: r is not None and r["state"] == "removed")
    return json_response({"instance_id": instance_id, "state": "removed"})


# --- tasks -------------------------------------------------------------------------------------------


async def _service(proxy: ProxyState, service_id: int) -> Service | None:
    """A service with a registered instance, from the registry folded by this process."""

    def found() -> Service | None:
        service = proxy.view.registry.services.get(service_id)
        return service if service is not None and proxy.view.registry.instances_of(service_id) else None

    if (service := found()) is not None:
        return service
    with contextlib.suppress(TimeoutError):
        await proxy.view.catch_up(2.0)  # registered a moment ago?
    return found()


def _bool_param(value: str, name: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise BadRequest(f"{name} must be true or false")


def _timeout_param(request: Request, config: Config) -> float:
    raw = request.query_params.get("timeout")
    if raw is None:
        return config.proxy.wait
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= config.proxy.max_wait:
        raise BadRequest(f"timeout must be a number of seconds above 0 and at most {config.proxy.max_wait:g}")
    return value


async def add_task(request: Request) -> Response:
    user = authenticate(request)
    config: Config = request.app.state.config
    settings = config.proxy
    proxy = _proxy(request)
    unknown = sorted(set(request.query_params) - ADD_TASK_PARAMS)
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0]!r}; allowed: {', '.join(sorted(ADD_TASK_PARAMS))}")
    wait = _bool_param(request.query_params.get("wait", "true"), "wait")
    timeout = _timeout_param(request, config)
    body = only_fields(await read_json(request, settings.max_body), {"service_id", "args"}, {"service_id", "args"})
    service_id = body["service_id"]
    if isinstance(service_id, bool) or not isinstance(service_id, int) or service_id < 0:
        raise BadRequest("service_id must be a non-negative integer")
    service = await _service(proxy, service_id)
    if service is None:
        raise NotFound(f"no service {service_id}")
    try:
        values = check(service.arguments, body["args"])
    except ArgumentError as exc:
        raise BadRequest(str(exc), argument=exc.name) from None
    if not proxy.view.registry.healthy(service_id):
        with contextlib.suppress(TimeoutError):
            await proxy.view.catch_up(2.0)  # one may have come up a moment ago
        if not proxy.view.registry.healthy(service_id):
            raise Unavailable(f"no healthy instance of service {service_id} ({service.name})")
    args = await _materialize(request, user, service, values)

    task_id = new_id()
    now = utcnow()
    raw = encode(TaskSubmitted(
        event_id=new_id(), stream_id=task_id, sequence=1, occurred_at=now, correlation_id=task_id,
        actor=user.user_id, service_id=service_id, service_name=service.name, user_id=user.user_id, args=args,
        types=[a.type for a in service.arguments], deadline=now + timedelta(seconds=settings.task_ttl),
    ))
    if len(raw) > MAX_EVENT:
        raise TooLarge(f"the task is {len(raw)} bytes once encoded, over {MAX_EVENT}: pass large data as files")
    if not proxy.tasks.admit(task_id, service_id, settings.queue):
        raise TooManyRequests(f"service {service_id} ({service.name}) has {settings.queue} tasks waiting; retry later")
    waiter = proxy.tasks.expect(task_id) if wait else None
    try:
        await proxy.bus.send(TASK_EVENTS, task_id, raw)
    except BrokerUnavailable as exc:
        proxy.tasks.abandon(task_id)
        raise Unavailable(f"the task was not accepted: {exc}") from exc
    if waiter is None:
        return json_response({"task_id": task_id, "state": PENDING}, 202, {"Location": f"/task_info/{task_id}"})
    try:
        ending = await asyncio.wait_for(waiter, timeout)
    except TimeoutError:
        raise GatewayTimeout(f"no answer within {timeout:g} s; the task goes on: poll GET /task_info/{task_id}",
                             task_id=task_id) from None
    finally:
        proxy.tasks.forget(task_id)
    return _ending_response(request, ending, service_id)


def _ending_response(request: Request, ending: Ending, service_id: int) -> Response:
    task_id = ending.stream_id
    if isinstance(ending, TaskFailed):
        error: type[ApiError] = {REJECTED: Unprocessable, NO_INSTANCE: Unavailable, EXPIRED: GatewayTimeout}.get(
            ending.reason, BadGateway)
        raise error(ending.error, task_id=task_id, state="failed", failure=ending.reason, attempts=ending.attempts)
    answer = _answer(request, bytes(ending.answer), ending.answer_file_id)
    return json_response({
        "task_id": task_id, "service_id": service_id, "state": "answered", "instance_id": ending.instance_id,
        "attempts": ending.attempt, "answer": answer,
    })


def _answer(request: Request, inline: bytes | None, file_id: str | None) -> Any:
    """The answer as JSON to embed, read from the blob store when it was stored there."""
    if file_id:
        path = request.app.state.blobs.path(file_id)
        return orjson.Fragment(path.read_bytes()) if path is not None else None
    return orjson.Fragment(inline) if inline else None


async def _materialize(request: Request, user: User, service: Service, values: list[Any]) -> list[Any]:
    """Arguments as the event carries them: files checked, large inline data moved to the blob store."""
    names = [a.argument_name for a in service.arguments]
    file_args = {i: v.file_id for i, v in enumerate(values) if isinstance(v, FileArg) and v.file_id}
    if file_args:
        await _check_files(request, user, {i: (names[i], f) for i, f in file_args.items()})
    limit = request.app.state.config.proxy.inline_limit
    out: list[Any] = []
    for name, value in zip(names, values, strict=True):
        if not isinstance(value, FileArg):
            out.append(value)
        elif value.file_id:
            out.append({"file_id": value.file_id})
        elif value.data is not None and len(value.data) > limit:
            out.append({"file_id": await _store(request, user, name, value.data)})
        else:
            out.append({"data": value.text or base64.b64encode(value.data or b"").decode()})
    return out


async def _check_files(request: Request, user: User, wanted: dict[int, tuple[str, str]]) -> None:
    state = request.app.state
    ids = sorted({f for _, f in wanted.values()})

    async def fetch() -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await state.pool.fetch(
            "SELECT file_id, owner_id, purged_at FROM files WHERE file_id = ANY($1::uuid[])", ids)
        return rows

    rows = await fetch()
    if len(rows) < len(ids) and any(state.watch.is_recent(i) for i in ids):
        rows = await state.watch.until(fetch, lambda found: len(found) == len(ids))  # just uploaded
    found = {str(r["file_id"]): r for r in rows}
    for index, (name, file_id) in sorted(wanted.items()):
        row = found.get(file_id)
        if row is None or row["purged_at"] is not None:
            raise BadRequest(f"argument {index} ({name!r}): unknown file id {file_id}", argument=name)
        if row["owner_id"] != user.user_id and not user.is_admin:
            raise BadRequest(f"argument {index} ({name!r}): file {file_id} belongs to another user", argument=name)


async def _store(request: Request, user: User, name: str, data: bytes) -> str:
    file_id = new_id()
    size, sha256 = await asyncio.to_thread(request.app.state.blobs.put_bytes, file_id, data)
    event = FileStored(event_id=new_id(), stream_id=file_id, sequence=1, occurred_at=utcnow(), correlation_id=file_id,
                       actor=user.user_id, owner_id=user.user_id, name=f"task-argument-{name}"[:200], size=size,
                       sha256=sha256, content_type="application/octet-stream")
    try:
        await request.app.state.bus.send(FILE_EVENTS, file_id, encode(event))
    except BrokerUnavailable as exc:
        request.app.state.blobs.delete(file_id)
        raise Unavailable(f"the task was not accepted: {exc}") from exc
    return file_id


async def _fetch_task(pool: asyncpg.Pool, task_id: str) -> Task | None:
    record = await pool.fetchrow(f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks WHERE task_id = $1", task_id)
    return task_from_record(record) if record else None


async def task_info(request: Request) -> Response:
    user = authenticate(request)
    task_id = parse_uuid(request.path_params["task_id"], "task_id")
    state = request.app.state
    task: Task | None = await state.watch.read(task_id, lambda: _fetch_task(state.pool, task_id))
    if task is None:
        raise NotFound(f"no task {task_id}")
    if task.user_id != user.user_id and not user.is_admin:
        raise Forbidden(f"task {task_id} belongs to another user")
    if task.state == PENDING and (ending := _proxy(request).tasks.ending(task_id)) is not None:
        task = task_fold.apply(task, ending) or task  # this process saw it end before the projector did
    return json_response({
        "task_id": task.task_id, "service_id": task.service_id, "state": task.state, "attempts": task.attempts,
        "instance_id": task.instance_id, "answer": _answer(request, task.answer, task.answer_file_id),
        "answer_file_id": task.answer_file_id, "error": task.error, "failure": task.failure,
        "submitted_at": _iso(task.submitted_at), "finished_at": _iso(task.finished_at),
    })


ROUTES = [
    Route("/services_list", services_list, methods=["GET"]),
    Route("/service_info/{service_id}", service_info, methods=["GET"]),
    Route("/add_task", add_task, methods=["POST"]),
    Route("/task_info/{task_id}", task_info, methods=["GET"]),
    Route("/services", list_instances, methods=["GET"]),
    Route("/services", register, methods=["POST"]),
    Route("/services/{instance_id}", remove, methods=["DELETE"]),
]
