"""Talking to worker-service instances: their /me and their task route (the HTTP adapter).

The interface an instance implements (docs/proxy.md):

    GET  /me          {"name", "description", "input": [{argument_name, argument_description, type}],
                       "task_path": "/run" (optional), "max_concurrency": N (optional)}
    POST <task_path>  {"task_id": "...", "args": [...]}  ->  2xx and the answer as JSON
                      4xx: the arguments are refused (not retried);  5xx, 408, 429, no answer: retried elsewhere

Images and files reach the instance as base64 strings, whatever form the caller gave them in.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import msgspec
import orjson

from events.services import ARGUMENT_TYPES, Argument, Description
from services.proxy.http import HttpClient
from services.proxy.tasks import Answered, Errored

MAX_ME = 1024 * 1024
MAX_ANSWER = 64 * 1024 * 1024
MAX_NAME = 200
MAX_ARGUMENTS = 100


class InvalidDescription(ValueError):
    """An instance's /me is not the seed's document."""

    retryable = False


class InstanceUnreachable(RuntimeError):
    """The instance did not answer (connection refused or reset, timeout, oversized answer)."""

    retryable = True


def normalize_url(url: Any, allowed_hosts: tuple[str, ...] = ()) -> str:
    """`scheme://host[:port][/path]` without a trailing slash; ValueError says what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("url must be a non-empty string such as http://127.0.0.1:8101")
    if len(url) > 2000:
        raise ValueError("url is over 2000 characters")
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"url {url[:100]!r} must start with http:// or https://")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"url {url[:100]!r} has an invalid port") from None
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError(f"url {url[:100]!r} names no host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"url {url[:100]!r} must not have a query, a fragment or credentials")
    if allowed_hosts and host not in allowed_hosts:
        raise ValueError(f"host {host!r} is not one of the allowed hosts ({', '.join(allowed_hosts)})")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def parse_me(body: bytes) -> Description:
    """The description an instance's /me answered, checked field by field."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidDescription("/me did not answer JSON") from None
    if not isinstance(doc, dict):
        raise InvalidDescription("/me must answer a JSON object")
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise InvalidDescription(f"/me: name must be a non-empty string of at most {MAX_NAME} characters")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise InvalidDescription("/me: description must be a string")
    raw_input = doc.get("input", [])
    if not isinstance(raw_input, list) or len(raw_input) > MAX_ARGUMENTS:
        raise InvalidDescription(f"/me: input must be an array of at most {MAX_ARGUMENTS} arguments")
    arguments = [_argument(item, i) for i, item in enumerate(raw_input)]
    names = [a.argument_name for a in arguments]
    if len(set(names)) != len(names):
        raise InvalidDescription("/me: two arguments share a name")
    task_path = doc.get("task_path", "/run")
    if not isinstance(task_path, str) or not task_path.startswith("/") or len(task_path) > 500:
        raise InvalidDescription("/me: task_path must be a path starting with /")
    concurrency = doc.get("max_concurrency")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                    or not 1 <= concurrency <= 10_000):
        raise InvalidDescription("/me: max_concurrency must be an integer from 1 to 10000")
    return Description(name=name.strip(), description=description, arguments=arguments, task_path=task_path,
                       max_concurrency=concurrency)


def _argument(item: Any, index: int) -> Argument:
    if not isinstance(item, dict):
        raise InvalidDescription(f"/me: input[{index}] must be an object")
    name, text, kind = item.get("argument_name"), item.get("argument_description", ""), item.get("type")
    if not isinstance(name, str) or not name:
        raise InvalidDescription(f"/me: input[{index}].argument_name must be a non-empty string")
    if not isinstance(text, str):
        raise InvalidDescription(f"/me: input[{index}].argument_description must be a string")
    if kind not in ARGUMENT_TYPES:
        raise InvalidDescription(f"/me: input[{index}].type must be one of {', '.join(ARGUMENT_TYPES)}")
    return Argument(argument_name=name, argument_description=text, type=kind)


def outcome_of(instance_id: str, status: int, body: bytes) -> Answered | Errored:
    """What an instance's HTTP answer to a task means for the task."""
    if 200 <= status < 300:
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            return Errored(instance_id, f"instance answered {status} with a body that is not JSON")
        return Answered(instance_id, body)
    detail = _error_text(body)
    if 400 <= status < 500 and status not in (408, 429):
        return Errored(instance_id, f"the service refused the task ({status}): {detail}", retryable=False)
    return Errored(instance_id, f"instance answered {status}: {detail}")


def _error_text(body: bytes) -> str:
    try:
        doc = orjson.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return str(doc["error"])[:500]
    except orjson.JSONDecodeError:
        pass
    return body[:500].decode(errors="replace").strip() or "(no body)"


def description_doc(description: Description) -> dict[str, Any]:
    """The seed's /me shape of a description (what the API shows and the example services answer)."""
    return {"name": description.name, "description": description.description,
            "input": msgspec.to_builtins(description.arguments), "task_path": description.task_path,
            "max_concurrency": description.max_concurrency}


class InstanceClient:
    """One pool of kept-alive connections per process."""

    def __init__(self) -> None:
        self.http = HttpClient()

    async def close(self) -> None:
        await self.http.close()

    async def describe(self, url: str, timeout: float) -> Description:
        """The instance's /me; InstanceUnreachable or InvalidDescription otherwise."""
        status, body = await self._request("GET", f"{url}/me", None, timeout, MAX_ME)
        if status != 200:
            raise InstanceUnreachable(f"GET {url}/me answered {status}")
        return parse_me(body)

    async def run(self, url: str, task_path: str, body: bytes, timeout: float, task_id: str) -> tuple[int, bytes]:
        """POST a task; the status and body of the answer, or InstanceUnreachable."""
        return await self._request("POST", f"{url}{task_path}", body, timeout, MAX_ANSWER,
                                   {"Content-Type": "application/json", "X-Skyjobs-Task-Id": task_id})

    async def _request(self, method: str, url: str, body: bytes | None, timeout: float, limit: int,
                       headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        try:
            return await self.http.request(method, url, body, headers, timeout, limit)
        except TimeoutError as exc:
            raise InstanceUnreachable(f"{method} {url} did not answer within {timeout:g} s") from exc
        except (OSError, UnicodeError, ValueError) as exc:  # HttpFailed is an OSError
            raise InstanceUnreachable(f"{method} {url} failed: {exc}") from exc


async def gather_limited(coros: list[Any], limit: int) -> list[Any]:
    """Run coroutines with at most `limit` at once; results (or exceptions) in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)
