"""Pipelines run inside one process: the workers' executor, flow and joins, with in-process queues
where the workers have Kafka. For unit tests (the conformance suite) and nothing else.

    runs = LocalRuns(HttpTransport(), Settings(self_url=url))
    answer = await runs.run(parse(spec), Message(...), Caller("GET"))
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.pipelines.executor import Executor, NoJournal, Run, Transport
from services.pipelines.flow import (
    END,
    Arrival,
    Caller,
    Failed,
    Flow,
    Fork,
    Point,
    Settings,
    Token,
    answer,
    joined_token,
    root_token,
)
from services.pipelines.messages import Message
from services.pipelines.spec import Spec


class _Sink:
    def __init__(self, runs: LocalRuns, result: asyncio.Future[Message]) -> None:
        self.runs = runs
        self.result = result
        self.points: dict[str, Point] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def local(self, run: Run, token: Token) -> bool:
        return True

    async def forked(self, run: Run, fork: Fork, sent: list[Token]) -> None:
        self.runs.events.append(("fanned-out", fork.element, fork.kind, len(fork.tokens)))

    async def arrived(self, run: Run, arrival: Arrival) -> None:
        point = self.points.setdefault(arrival.point, Point(arrival.kind, arrival.level))
        if point.ended:
            self.runs.late += 1  # after the end: the end was decided too early (tests look at this)
        if not point.add(arrival) or not point.complete:
            return
        if arrival.point == END:
            point.ended = True
            self._end(answer(point.last, run.first))
            return
        del self.points[arrival.point]
        self.runs.events.append(("joined", arrival.point, arrival.kind, len(point.arrivals)))
        token = joined_token(point.arrivals, arrival.point)
        task = asyncio.ensure_future(self.runs.executor.run_token(run, token, NoJournal(), self))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def failed(self, run: Run, failed: Failed) -> None:
        self._end(failed.message)

    async def ended(self, run: Run, result: Message, token: Token) -> None:
        self._end(result)

    def _end(self, result: Message) -> None:
        if not self.result.done():
            self.result.set_result(result)

    async def event(self, run: Run, event: Any) -> None:
        self.runs.events.append(event)


class LocalRuns:
    def __init__(self, transport: Transport, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self.executor = Executor(transport, settings)
        self.settings = settings
        self.events: list[Any] = []
        self.late = 0  # arrivals at a run's end after it ended

    async def run(self, spec: Spec, message: Message, caller: Caller, run_id: str = "", drain: bool = False) -> Message:
        """The run's answer; `drain`: wait for what is still running after the end (tests of the accounting)."""
        from services.pipelines.messages import error_message

        if caller.depth > self.settings.max_depth:
            return error_message(508, f"pipelines call each other more than {self.settings.max_depth} deep")
        result: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        sink = _Sink(self, result)
        run = Run(run_id or "local", "local", spec, b"", caller, time.time() + self.settings.run_timeout, message,
                  Flow(spec, caller, self.settings, run_id),
                  semaphore=asyncio.Semaphore(spec.concurrency) if spec.concurrency else None)
        token = root_token(spec, message, self.settings)
        token.variables.setdefault("$_user", caller.user)
        token.variables.setdefault("$_headers", dict(caller.headers))
        first = asyncio.ensure_future(self.executor.run_token(run, token, NoJournal(), sink))
        try:
            answer = await asyncio.wait_for(result, self.settings.run_timeout + 1)
            if drain:
                await asyncio.wait_for(asyncio.gather(first, *sink.tasks, return_exceptions=True), 5)
                while sink.tasks:
                    await asyncio.wait_for(asyncio.gather(*sink.tasks, return_exceptions=True), 5)
            return answer
        finally:
            first.cancel()
            for task in list(sink.tasks):
                task.cancel()
