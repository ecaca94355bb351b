"""Runs tokens: the pure flow (services/pipelines/flow.py) plus the I/O it asks for.

    executor = Executor(transport, settings)
    await executor.run_token(run, token, journal, sink)

A token is moved on as far as it goes here: its steps are called over HTTP, and the children of a
fork that the sink keeps local are run here too (concurrently); the rest goes to the sink: forked
tokens to other workers, arrivals to joiners, the end of the run. The same code runs in the
pipeline workers (services/pipelines/agents.py: the sink is Kafka) and in unit tests
(services/pipelines/local.py: the sink is in-process).

Steps are write-ahead for unsafe methods: before a POST (PUT, PATCH, DELETE...) is sent, the
journal records it durably. A token that comes back after its worker was lost finds there what
the lost worker may have sent: a safe method (GET, HEAD, OPTIONS) or a `!retry` step is sent
again, anything else fails the run with the reason rather than being repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

from events.pipelines import StepRequested, StepResponded
from services.pipelines.flow import (
    END,
    Arrival,
    Call,
    Caller,
    Failed,
    Failure,
    Flow,
    Fork,
    Outcome,
    Request,
    Settings,
    Token,
    answer,
)
from services.pipelines.messages import Message, error_message
from services.pipelines.spec import SAFE_METHODS, Spec, Step

log = logging.getLogger(__name__)


class Transport(Protocol):
    async def send(self, method: str, url: str, headers: dict[str, str], body: bytes | None,
                   timeout: float, max_body: int) -> Message: ...


class Journal(Protocol):
    """What a token's earlier attempts requested (unsafe steps only)."""

    def requested(self, key: str) -> bool: ...

    async def record(self, key: str) -> None:
        """Durable before it returns: the request may be sent after this."""


class NoJournal:
    def requested(self, key: str) -> bool:
        return False

    async def record(self, key: str) -> None:
        return None


@dataclass
class Run:
    """What the tokens of one run share on one worker."""

    run_id: str
    pipeline: str
    spec: Spec
    spec_raw: bytes
    caller: Caller
    deadline: float  # epoch seconds
    first: Message  # the caller's message
    flow: Flow
    correlation_id: str = ""
    route: str | None = None
    semaphore: asyncio.Semaphore | None = None
    sequence: int = 0
    on_step: Callable[[str, int, float], None] | None = None  # (method, status, seconds): metrics

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence


class Sink(Protocol):
    """Where what leaves a token goes."""

    def local(self, run: Run, token: Token) -> bool:
        """Run this forked child here (instead of sending it)."""

    async def forked(self, run: Run, fork: Fork, sent: list[Token]) -> None:
        """Send `sent` to be run elsewhere; record the fan-out."""

    async def arrived(self, run: Run, arrival: Arrival) -> None: ...

    async def failed(self, run: Run, failed: Failed) -> None:
        """A token that does not hold the whole run failed: the run's end decides."""

    async def ended(self, run: Run, result: Message, token: Token) -> None:
        """The run ended here (the token held the whole run)."""

    async def event(self, run: Run, event: Any) -> None:
        """A step event, sent without waiting (the sink flushes before the token is acknowledged)."""


def credit0(token: Token) -> Fraction:
    return Fraction(token.frames[0].credit)


class Executor:
    def __init__(self, transport: Transport, settings: Settings, actor: str = "skyjobs-pipelines") -> None:
        self.transport = transport
        self.settings = settings
        self.actor = actor

    async def run_token(self, run: Run, token: Token, journal: Journal, sink: Sink) -> None:
        """Move `token` on; every way it can end is handed to `sink` (never raises for a run's failure)."""
        remaining = run.deadline - time.time()
        try:
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                await self._drive(run, token, journal, sink)
        except TimeoutError:
            message = error_message(504, f"the pipeline did not finish within {self.settings.run_timeout:g} s")
            await self._fail(run, Failed(token, message), sink)
        except Failure as failure:
            await self._fail(run, Failed(token, failure.message), sink)
        except Exception as exc:  # a bug must end the run, not leave it waiting
            log.exception("run %s: token %s crashed", run.run_id, token.token_id)
            message = error_message(500, f"internal error: {exc.__class__.__name__}")
            await self._fail(run, Failed(token, message), sink)

    async def _drive(self, run: Run, token: Token, journal: Journal, sink: Sink) -> None:
        await self._handle(run, run.flow.advance(token), journal, sink)

    async def _handle(self, run: Run, outcomes: list[Outcome], journal: Journal, sink: Sink) -> None:
        local: list[Any] = []
        for outcome in outcomes:
            if isinstance(outcome, Call):
                local.append(self._call(run, outcome, journal, sink))
            elif isinstance(outcome, Fork):
                here = [t for t in outcome.tokens if sink.local(run, t)]
                await sink.forked(run, outcome, [t for t in outcome.tokens if not sink.local(run, t)])
                local.extend(self._drive(run, t, journal, sink) for t in here)
            elif isinstance(outcome, Arrival):
                await self._arrive(run, outcome, sink)
            else:
                await self._fail(run, outcome, sink)
        if len(local) == 1:
            await local[0]
        elif local:
            results = await asyncio.gather(*local, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    async def _arrive(self, run: Run, arrival: Arrival, sink: Sink) -> None:
        if not arrival.token.tracked:
            return
        if arrival.point == END and arrival.passes and arrival.credit == 1:
            await sink.ended(run, answer(arrival.message, run.first), arrival.token)
        else:
            await sink.arrived(run, arrival)

    async def _fail(self, run: Run, failed: Failed, sink: Sink) -> None:
        if not failed.token.tracked:
            log.info("run %s: a tee branch failed: %s", run.run_id, failed.message.error_message()[:200])
            return
        if credit0(failed.token) == 1:
            await sink.ended(run, failed.message, failed.token)
        else:
            await sink.failed(run, failed)

    async def _call(self, run: Run, call: Call, journal: Journal, sink: Sink) -> None:
        if len(call.requests) == 1:
            responses = [await self._send(run, call.token, call.step, call.requests[0], journal, sink)]
        else:
            responses = list(await asyncio.gather(*(self._send(run, call.token, call.step, r, journal, sink)
                                                    for r in call.requests)))
        await self._handle(run, run.flow.after_call(call, responses), journal, sink)

    async def _send(self, run: Run, token: Token, step: Step, request: Request, journal: Journal,
                    sink: Sink) -> Message:
        if request.immediate is not None:
            return request.immediate
        safe = request.method in SAFE_METHODS or step.retryable
        retry = 0
        if journal.requested(request.key):
            if not safe:
                raise Failure(error_message(
                    502, f"{step.path}: {request.method} {request.url} may have been sent by a worker that was lost "
                         f"mid-run; it is not sent again because {request.method} is not safe to repeat (mark the "
                         "step !retry if it is)"))
            retry = 1
        if not safe:
            await journal.record(request.key)
        base = {"stream_id": run.run_id, "occurred_at": None, "correlation_id": run.correlation_id or run.run_id,
                "actor": self.actor, "token_id": token.token_id, "step": request.key, "element": step.path}
        await sink.event(run, ("requested", base, {"method": request.method, "url": request.url, "retry": retry}))
        started = time.perf_counter()
        semaphore = run.semaphore or contextlib.nullcontext()
        async with semaphore:
            response = await self.transport.send(request.method, request.url, request.headers, request.body,
                                                 self.settings.step_timeout, self.settings.max_body)
        seconds = time.perf_counter() - started
        await sink.event(run, ("responded", base, {
            "status": response.status, "duration_ms": round(seconds * 1000, 3), "output_name": request.output_name,
            "size": len(response.body), "content_type": response.content_type,
            "error": response.error_message()[:500] if response.failed else None}))
        if run.on_step is not None:
            run.on_step(request.method, response.status, seconds)
        return response


def step_event(kind: str, base: dict[str, Any], fields: dict[str, Any], event_id: str, sequence: int,
               occurred_at: Any) -> StepRequested | StepResponded:
    args = {**base, **fields, "event_id": event_id, "sequence": sequence, "occurred_at": occurred_at}
    return StepRequested(**args) if kind == "requested" else StepResponded(**args)


@dataclass
class Runs:
    """Each run's shared state on a worker, by run id (small LRU: tokens of one run arrive close together)."""

    limit: int = 10_000
    runs: dict[str, Run] = field(default_factory=dict)

    def get(self, run_id: str) -> Run | None:
        run = self.runs.pop(run_id, None)
        if run is not None:
            self.runs[run_id] = run
        return run

    def put(self, run: Run) -> None:
        self.runs[run.run_id] = run
        while len(self.runs) > self.limit:
            self.runs.pop(next(iter(self.runs)))
