"""The pipeline executor: runs a parsed Spec on a message, calling steps over HTTP.

    engine = Engine(HttpTransport(), Settings(self_url="http://127.0.0.1:8000"))
    result = await engine.run(spec, message, Caller(method="POST", base_path="/p/x", service_path="/1"))

Messages flow element by element; a splitter or a parallel subpipeline makes several, and each one
continues down the rest of the pipeline as soon as it is ready (no waiting for its siblings) until a
joiner, which waits for exactly the messages that were sent to it. A failure (status >= 300) ends the
run with that message unless a conditional step (`?`/`try`) turned it into data. Parallel branches
and split parts go through `Fanout`, which runs them here or (services/pipelines/agents.py) on
other workers through Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import orjson

from services.pipelines import parts
from services.pipelines.conditions import ConditionContext, passes
from services.pipelines.errors import ExpressionError, LimitExceeded, PipelineError
from services.pipelines.expressions import Budget
from services.pipelines.messages import (
    HOP_HEADERS,
    Message,
    error_message,
    from_error_body,
    is_error_body,
    to_error_body,
)
from services.pipelines.spec import Element, Joiner, Mode, Pipeline, Spec, Splitter, Step, Transform
from services.pipelines.transform import TransformContext, transform
from services.pipelines.urls import PatternError, UrlContext, json_path, normalise, resolve

log = logging.getLogger(__name__)
DEPTH_HEADER = "x-skyjobs-pipeline-depth"
RUN_HEADER = "x-skyjobs-pipeline-run"


@dataclass(frozen=True)
class Settings:
    """Guards of every run (SKYJOBS_PIPELINE_*)."""

    self_url: str = "http://127.0.0.1:8000"  # where site-relative URLs go without a targetHost
    allowed_hosts: frozenset[str] = frozenset()  # besides the self host and the targetHost
    step_timeout: float = 30.0
    run_timeout: float = 120.0
    max_body: int = 10 * 1024**2
    max_fanout: int = 100  # messages one splitter, parallel pipeline or ${list[]} may make
    max_steps: int = 1000  # requests per run
    expression_steps: int = 200_000
    expression_seconds: float = 1.0
    expression_memory: int = 1_000_000
    max_depth: int = 8  # pipelines calling pipelines

    def budget(self) -> Budget:
        return Budget(self.expression_steps, self.expression_seconds, self.expression_memory)


@dataclass(frozen=True)
class Caller:
    """The request that invoked the pipeline."""

    method: str = "GET"
    base_path: str = ""
    service_path: str = ""
    query: tuple[tuple[str, str], ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    user: Any = None
    depth: int = 0


class Failure(Exception):
    """A failed message ends the run (unless a conditional step caught it)."""

    def __init__(self, message: Message) -> None:
        super().__init__(f"{message.status} {message.error_message()}")
        self.message = message


class Transport(Protocol):
    async def send(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                   timeout: float, max_body: int) -> Message: ...


class HttpTransport:
    """Steps over HTTP with httpx: one connection pool per process."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self.client = client or httpx.AsyncClient(limits=httpx.Limits(max_connections=200, max_keepalive_connections=100))

    async def close(self) -> None:
        await self.client.aclose()

    async def send(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                   timeout: float, max_body: int) -> Message:
        request = self.client.build_request(method, url, headers=headers, content=body, timeout=timeout)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TimeoutException:
            return error_message(504, f"{method} {url} timed out after {timeout} s")
        except httpx.HTTPError as exc:
            return error_message(502, f"{method} {url} failed: {exc.__class__.__name__} {exc}")
        try:
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_body:
                return error_message(502, f"{method} {url} answered {declared} bytes, over the limit of {max_body}")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > max_body:
                    return error_message(502, f"{method} {url} answered more than {max_body} bytes (the limit)")
        except httpx.TimeoutException:
            return error_message(504, f"{method} {url} timed out after {timeout} s")
        except httpx.HTTPError as exc:
            return error_message(502, f"{method} {url} failed while reading: {exc}")
        finally:
            await response.aclose()
        headers_out = {k.lower(): v for k, v in response.headers.items() if k.lower() not in HOP_HEADERS}
        return Message(status=response.status_code, headers=headers_out, body=bytes(data), method=method)


@dataclass
class StepRecord:
    """One request of a run, as GET /api/pipeline_runs/{id} shows it."""

    path: str
    method: str
    url: str
    status: int = 0
    started_at: float = 0.0
    duration_ms: float = 0.0
    output_name: str = ""
    error: str | None = None


@dataclass
class Run:
    """The state of one run while it executes (variables are shared by its branches)."""

    spec: Spec
    caller: Caller
    run_id: str = ""
    variables: dict[str, Any] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    requests: int = 0
    semaphore: asyncio.Semaphore | None = None
    on_step: Callable[[StepRecord], Awaitable[None]] | None = None
    background: set[asyncio.Task[Any]] = field(default_factory=set)

    def url_context(self) -> UrlContext:
        c = self.caller
        return UrlContext(c.method, c.base_path, c.service_path, c.query, self.variables)


Branch = Callable[[], AsyncIterator[Message]]


class Fanout(Protocol):
    """Runs the branches of a fan-out and yields their messages in completion order."""

    def __call__(self, run: Run, branches: list[Branch], where: str) -> AsyncIterator[Message]: ...


async def merge(branches: list[Branch]) -> AsyncIterator[Message]:
    """The messages of several branches as each arrives; the first error cancels the rest."""
    if len(branches) == 1:
        async for m in branches[0]():
            yield m
        return
    queue: asyncio.Queue[tuple[int, Message | None, BaseException | None]] = asyncio.Queue()

    async def pump(branch: Branch) -> None:
        try:
            async for m in branch():
                await queue.put((0, m, None))
        except Exception as exc:
            await queue.put((0, None, exc))
        finally:
            await queue.put((1, None, None))

    tasks = [asyncio.ensure_future(pump(b)) for b in branches]
    remaining = len(tasks)
    try:
        while remaining:
            done, message, exc = await queue.get()
            if exc is not None:
                raise exc
            if done:
                remaining -= 1
            elif message is not None:
                yield message
    finally:
        for t in tasks:
            t.cancel()


async def local_fanout(run: Run, branches: list[Branch], where: str) -> AsyncIterator[Message]:
    async for m in merge(branches):
        yield m


def default_child_mode(parent: Mode, conditional: bool) -> Mode:
    if parent.kind == "parallel" or conditional or parent.kind == "conditional":
        return Mode("serial")
    return Mode("parallel")


_CONDITIONAL = Mode("conditional", "next", "end")


class Engine:
    def __init__(self, transport: Transport, settings: Settings = Settings(), fanout: Fanout = local_fanout) -> None:
        self.transport = transport
        self.settings = settings
        self.fanout = fanout
        self.self_origin = _origin(settings.self_url)

    async def run(self, spec: Spec, message: Message, caller: Caller, run: Run | None = None) -> Message:
        """The pipeline's answer: the last message out, or the input with 204 when none came out."""
        run = run or Run(spec, caller)
        run.variables.setdefault("$_user", caller.user)
        run.variables.setdefault("$_headers", dict(caller.headers))
        if spec.concurrency:
            run.semaphore = asyncio.Semaphore(spec.concurrency)
        if caller.depth > self.settings.max_depth:
            return error_message(508, f"pipelines call each other more than {self.settings.max_depth} deep")
        last: Message | None = None
        try:
            async with asyncio.timeout(self.settings.run_timeout):
                async for out in self.pipeline(run, spec.pipeline, message, Mode("serial"), False):
                    last = out
        except Failure as failure:
            return failure.message
        except TimeoutError:
            return error_message(504, f"the pipeline did not finish within {self.settings.run_timeout} s")
        except PipelineError as exc:
            return error_message(exc.status, exc.message)
        if last is None:
            return message.copy(status=204, body=b"", headers={})
        if last.null:
            return Message(status=200, headers={"content-type": "application/json"}, body=b"{}")
        return last

    async def run_branch(self, run: Run, element: Element, message: Message, parent: Mode) -> list[Message]:
        """One parallel branch on its own (used by workers that run branches sent over Kafka)."""
        return [m async for m in self.branch(run, element, message, parent)]

    # --- pipelines ------------------------------------------------------------------------------

    def pipeline(self, run: Run, p: Pipeline, message: Message, mode: Mode, skip_test: bool) -> AsyncIterator[Message]:
        mode = p.mode or mode
        if mode.kind == "parallel":
            return self.parallel(run, p, message, mode)
        if mode.kind in ("tee", "teeWait"):
            return self.tee(run, p, message, mode)
        return self.serial(run, p, message, mode, skip_test)

    async def tee(self, run: Run, p: Pipeline, message: Message, mode: Mode) -> AsyncIterator[Message]:
        async def drain() -> None:
            async for _ in self.serial(run, p, message.copy(), Mode("serial"), False):
                pass

        if mode.kind == "teeWait":
            await drain()
        else:
            task = asyncio.ensure_future(drain())
            run.background.add(task)
            task.add_done_callback(_forget(run))
        yield message

    async def parallel(self, run: Run, p: Pipeline, message: Message, mode: Mode) -> AsyncIterator[Message]:
        if len(p.elements) > self.settings.max_fanout:
            raise LimitExceeded(f"{p.path}: {len(p.elements)} parallel branches is over the limit of {self.settings.max_fanout}")
        branches: list[Branch] = []
        for i, element in enumerate(p.elements):
            copy = message.renamed(str(i))
            if not self.test(run, element, copy):
                continue
            branches.append(_bind(self.branch, run, element, copy, mode))
        if not branches:
            return
        async for m in self.fanout(run, branches, p.path):
            yield m

    async def branch(self, run: Run, element: Element, message: Message, parent: Mode) -> AsyncIterator[Message]:
        if isinstance(element, Pipeline):
            async for m in self.pipeline(run, element, message, Mode("serial"), True):
                yield m
        else:
            async for m in self.element(run, element, message, False):
                yield m

    def test(self, run: Run, element: Element, message: Message) -> bool:
        condition = element.condition if isinstance(element, Step) else element.test if isinstance(element, Pipeline) else None
        if condition is None:
            return True
        ctx = ConditionContext(run.caller.method, _segments(run.caller.service_path),
                               run.caller.service_path.endswith("/"), run.caller.user, run.variables)
        try:
            return passes(condition, message, ctx, self.settings.budget())
        except ExpressionError as exc:
            raise Failure(error_message(400, exc.message)) from None

    async def serial(self, run: Run, p: Pipeline, message: Message, mode: Mode, skip_test: bool,
                     conditional: bool = False) -> AsyncIterator[Message]:
        elements = p.elements
        current: list[tuple[Message, bool, bool]] = [(message, conditional or mode.kind == "conditional", skip_test)]
        start = 0
        while True:
            stop = next((k for k in range(start, len(elements)) if isinstance(elements[k], Joiner)), len(elements))
            gathered: list[tuple[Message, bool]] = []
            segments = [_bind(self.segment, run, p, start, stop, m, mode, c, skip) for m, c, skip in current]
            async for m, cond, left in self._merged(run, segments, p.path):
                if left or stop == len(elements):
                    yield self.leave(m, cond)
                else:
                    gathered.append((m, cond))
            if stop == len(elements):
                return
            joiner = elements[stop]
            assert isinstance(joiner, Joiner)
            joined = parts.join(joiner.kind, [m for m, _ in gathered])
            joined.method = message.method
            current = [(joined, any(c for _, c in gathered), False)]
            start = stop + 1

    async def _merged(self, run: Run, segments: list[Callable[[], AsyncIterator[tuple[Message, bool, bool]]]],
                      where: str) -> AsyncIterator[tuple[Message, bool, bool]]:
        if len(segments) == 1:
            async for item in segments[0]():
                yield item
            return
        # carry (conditional, left) through the fan-out in the message's headers-free side channel
        tagged: list[Branch] = [_tagging(s) for s in segments]
        async for m in self.fanout(run, tagged, where):
            flags = m.headers.pop("x-skyjobs-flow", "00")
            yield m, flags[0] == "1", flags[1] == "1"

    def leave(self, message: Message, conditional: bool) -> Message:
        if conditional and is_error_body(message):
            raise Failure(from_error_body(message))
        return message

    async def segment(self, run: Run, p: Pipeline, i: int, stop: int, message: Message, mode: Mode,
                      conditional: bool, skip_test: bool) -> AsyncIterator[tuple[Message, bool, bool]]:
        """Elements i..stop-1 for one message: yields (message, conditional, left the pipeline)."""
        if i >= stop:
            yield message, conditional, False
            return
        element = p.elements[i]
        effective = _CONDITIONAL if conditional else mode
        if isinstance(element, Splitter):
            pieces = parts.split(element.kind, message, self.settings.max_fanout, self.settings.max_body)
            branches = [_bind(self.segment, run, p, i + 1, stop, piece, mode, conditional, False) for piece in pieces]
            async for item in self._merged(run, branches, element.path):
                yield item
            return
        if isinstance(element, Transform):
            out = self.transform(run, element, message)
            async for item in self.segment(run, p, i + 1, stop, out, mode, conditional, False):
                yield item
            return
        if not skip_test and not self.test(run, element, message):
            if effective.fail == "stop":
                return
            if effective.fail == "end":
                yield message, conditional, True
                return
            async for item in self.segment(run, p, i + 1, stop, message, mode, conditional, False):
                yield item
            return
        assert isinstance(element, Step | Pipeline)
        now_conditional = conditional or (isinstance(element, Step) and element.conditional)
        succeed = "next" if isinstance(element, Step) and element.conditional and not conditional else effective.succeed
        if isinstance(element, Step):
            outputs = [_one(m) for m in await self.step(run, element, message, now_conditional)]
        else:
            outputs = [_bind(self.pipeline, run, element, message, default_child_mode(mode, conditional), True)]
        if succeed == "stop":
            async for _ in self._merged(run, [_flagged(o) for o in outputs], element.path):
                pass
            return
        if succeed == "end":
            async for m, _, _ in self._merged(run, [_flagged(o) for o in outputs], element.path):
                yield m, now_conditional, True
            return
        continuations = [_chain(o, self.segment, run, p, i + 1, stop, mode, now_conditional) for o in outputs]
        async for item in self._merged(run, continuations, element.path):
            yield item

    # --- elements -------------------------------------------------------------------------------

    async def element(self, run: Run, element: Element, message: Message, conditional: bool) -> AsyncIterator[Message]:
        if isinstance(element, Step):
            for m in await self.step(run, element, message, conditional or element.conditional):
                yield m
        elif isinstance(element, Transform):
            yield self.transform(run, element, message)
        elif isinstance(element, Splitter):
            for m in parts.split(element.kind, message, self.settings.max_fanout, self.settings.max_body):
                yield m
        elif isinstance(element, Joiner):
            yield parts.join(element.kind, [message])
        else:
            async for m in self.pipeline(run, element, message, Mode("serial"), True):
                yield m

    def transform(self, run: Run, element: Transform, message: Message) -> Message:
        if message.null:
            return message
        run.variables["$_ok"] = message.ok
        run.variables["$_status"] = message.status
        ctx = TransformContext(run.url_context(), message.name, run.variables, self.settings.budget())
        try:
            value = transform(element.spec, message.json(), ctx)
        except ExpressionError as exc:
            raise Failure(error_message(400, f"{element.path}: transformation failed: {exc.message}")) from None
        return message.with_json(value)

    async def step(self, run: Run, step: Step, message: Message, conditional: bool) -> list[Message]:
        """The messages a step makes: usually one; `${list[]}` makes one per request."""
        if message.null or step.url is None:
            return [self.rename(run, step, message, message)]
        method = run.caller.method if step.method == "$METHOD" else (step.method or "POST")
        try:
            body_json = message.json() if "${" in step.url else None
            urls = resolve(step.url, run.url_context(), message.name, body_json)
        except PatternError as exc:
            return [self.settle(run, step, message, error_message(500, f"{step.path}: {exc.message}"), conditional)]
        if not urls:
            return [Message(name=message.name, null=True, method=method)]
        if len(urls) > self.settings.max_fanout:
            raise LimitExceeded(f"{step.path}: {len(urls)} requests is over the fan-out limit of {self.settings.max_fanout}")
        results = await asyncio.gather(*(self.call(run, step, method, u, message) for u in urls))
        if "[]" in step.url:  # one message per element: named by its index, like a split
            return [self.settle(run, step, message.renamed(str(k)), r, conditional) for k, r in enumerate(results)]
        return [self.settle(run, step, message, r, conditional) for r in results]

    def settle(self, run: Run, step: Step, message: Message, response: Message, conditional: bool) -> Message:
        if step.rename and step.rename.startswith("$") and step.rename != "$this":
            run.variables[step.rename] = to_error_body(response).json() if response.failed else response.json()
            return message
        if response.failed:
            if not conditional:
                raise Failure(response)
            response = to_error_body(response)
        response.name = message.name
        return self.rename(run, step, message, response)

    def rename(self, run: Run, step: Step, before: Message, message: Message) -> Message:
        if not step.rename or (step.rename.startswith("$") and step.rename != "$this"):
            return message
        name = (message.name or before.name) + step.rename if step.rename.startswith(".") else step.rename
        out = message.renamed(name)
        out.headers["content-disposition"] = f'form-data; name="{name}"'
        return out

    async def call(self, run: Run, step: Step, method: str, url: str, message: Message) -> Message:
        run.requests += 1
        if run.requests > self.settings.max_steps:
            raise LimitExceeded(f"the run made more than {self.settings.max_steps} requests (the limit per run)")
        absolute = normalise(self.absolute(run, url))
        origin = _origin(absolute)
        host = (urlsplit(absolute).hostname or "").lower()
        allowed = self.settings.allowed_hosts | {urlsplit(self.settings.self_url).hostname or ""}
        if run.spec.target_host:
            allowed = allowed | {urlsplit(run.spec.target_host).hostname or ""}
        if host not in allowed:
            return error_message(403, f"{step.path}: the host {host!r} is not on the pipeline allow-list")
        headers: dict[str, str] = {DEPTH_HEADER: str(run.caller.depth + 1)}
        if run.run_id:
            headers[RUN_HEADER] = run.run_id
        if message.headers.get("content-type"):
            headers["content-type"] = message.headers["content-type"]
        if message.name:
            headers["content-disposition"] = f'form-data; name="{message.name}"'
        auth = run.caller.headers.get("authorization")
        trusted = _origin(run.spec.target_host) if run.spec.target_host else self.self_origin
        if auth and origin == trusted:
            headers["authorization"] = auth
        body: bytes | None = None
        if method not in ("GET", "HEAD", "OPTIONS"):
            if step.body_path:
                found = json_path(message.json(), step.body_path, run.variables)
                body = orjson.dumps(found[0] if len(found) == 1 else found if found else None)
                headers["content-type"] = "application/json"
            else:
                body = message.body
        record = StepRecord(step.path, method, absolute, started_at=time.time())
        run.steps.append(record)
        started = time.perf_counter()
        semaphore = run.semaphore or contextlib.nullcontext()
        async with semaphore:
            response = await self.transport.send(method, absolute, headers, body, self.settings.step_timeout,
                                                 self.settings.max_body)
        record.duration_ms = round((time.perf_counter() - started) * 1000, 3)
        record.status = response.status
        record.output_name = step.rename or message.name
        if response.failed:
            record.error = response.error_message()[:500]
        if run.on_step is not None:
            await run.on_step(record)
        return response

    def absolute(self, run: Run, url: str) -> str:
        if "://" in url:
            return url
        base = run.spec.target_host or self.settings.self_url
        return base.rstrip("/") + "/" + url.lstrip("/")


def _origin(url: str | None) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


def _forget(run: Run) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        run.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("a tee branch failed: %s", task.exception())

    return done


def _bind(fn: Callable[..., AsyncIterator[Any]], *args: Any) -> Callable[[], AsyncIterator[Any]]:
    return lambda: fn(*args)


def _one(message: Message) -> Branch:
    async def gen() -> AsyncIterator[Message]:
        yield message

    return lambda: gen()


def _flagged(source: Branch) -> Callable[[], AsyncIterator[tuple[Message, bool, bool]]]:
    async def gen() -> AsyncIterator[tuple[Message, bool, bool]]:
        async for m in source():
            yield m, False, False

    return lambda: gen()


def _chain(source: Branch, segment: Callable[..., AsyncIterator[tuple[Message, bool, bool]]], run: Run, p: Pipeline,
           start: int, stop: int, mode: Mode, conditional: bool) -> Callable[[], AsyncIterator[tuple[Message, bool, bool]]]:
    """Each message of `source` continues down the pipeline as soon as it arrives."""

    async def gen() -> AsyncIterator[tuple[Message, bool, bool]]:
        continuations: list[Callable[[], AsyncIterator[tuple[Message, bool, bool]]]] = []
        queue: asyncio.Queue[tuple[Message, bool, bool] | BaseException | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def follow(m: Message) -> None:
            try:
                async for item in segment(run, p, start, stop, m, mode, conditional, False):
                    await queue.put(item)
            except Exception as exc:
                await queue.put(exc)

        async def produce() -> None:
            try:
                async for m in source():
                    t = asyncio.ensure_future(follow(m))
                    running.add(t)
                if running:
                    await asyncio.wait(set(running))
            except Exception as exc:
                await queue.put(exc)
            finally:
                await queue.put(None)

        producer = asyncio.ensure_future(produce())
        del continuations
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            producer.cancel()
            for t in running:
                t.cancel()

    return lambda: gen()


def _tagging(segment: Callable[[], AsyncIterator[tuple[Message, bool, bool]]]) -> Branch:
    async def gen() -> AsyncIterator[Message]:
        async for m, cond, left in segment():
            m = m.copy()
            m.headers["x-skyjobs-flow"] = ("1" if cond else "0") + ("1" if left else "0")
            yield m

    return lambda: gen()
