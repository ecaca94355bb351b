"""What the API follows of the pipelines, on its one Kafka tail (services/api/task_watch.py):

- the ends of runs (`pipeline.run-ended` on skyjobs.pipeline-runs, read from the end): a caller
  waiting at /p/{name} is answered one Kafka hop after the run's last worker wrote it;
- the specs (skyjobs.pipeline-events, read from the beginning): every API process holds every
  stored pipeline in memory, so a call finds its spec without a query and right after its PUT,
  and a PUT or DELETE learns the spec agent's decision (the event caused by its command).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from events.codec import DecodeError, decode_event
from events.pipelines import PipelineChangeRefused, PipelineDeleted, PipelineSaved, RunEnded, SpecEvent
from events.topics import PIPELINE_EVENTS, PIPELINE_RUNS
from services.pipelines.spec import Spec, parse

RECENT = 10_000


@dataclass
class Stored:
    name: str
    spec: bytes  # the JSON as saved
    user_id: str
    created_at: datetime
    updated_at: datetime
    sequence: int
    parsed: Spec | None = None

    def spec_tree(self) -> Spec:
        """The parsed spec (SpecError if the parser of this version refuses what an older one took)."""
        if self.parsed is None:
            self.parsed = parse(msgspec.json.decode(self.spec))
        return self.parsed


class _Peek(msgspec.Struct):
    type: str
    stream_id: str


_peek = msgspec.json.Decoder(_Peek)


class PipelineWatch:
    def __init__(self) -> None:
        self.specs: dict[str, Stored] = {}
        self.sequences: dict[str, int] = {}  # name -> last sequence applied (deleted names too)
        self.ends: dict[str, asyncio.Future[RunEnded]] = {}
        self.outcomes: dict[str, asyncio.Future[SpecEvent]] = {}
        self.ended: OrderedDict[str, None] = OrderedDict()  # runs this process saw end recently

    def handlers(self) -> dict[str, tuple[Any, bool]]:
        return {PIPELINE_RUNS: (self.on_run_record, False), PIPELINE_EVENTS: (self.on_spec_record, True)}

    def expect_end(self, run_id: str) -> asyncio.Future[RunEnded]:
        future: asyncio.Future[RunEnded] = asyncio.get_running_loop().create_future()
        self.ends[run_id] = future
        return future

    def expect_outcome(self, command_id: str) -> asyncio.Future[SpecEvent]:
        future: asyncio.Future[SpecEvent] = asyncio.get_running_loop().create_future()
        self.outcomes[command_id] = future
        return future

    def on_run_record(self, raw: bytes) -> None:
        head = _peek.decode(raw)
        if head.type != "pipeline.run-ended.v1":
            return
        self.ended[head.stream_id] = None
        while len(self.ended) > RECENT:
            self.ended.popitem(last=False)
        waiter = self.ends.pop(head.stream_id, None)
        if waiter is not None and not waiter.done():
            try:
                event = decode_event(raw)
            except DecodeError:
                return
            if isinstance(event, RunEnded):
                waiter.set_result(event)

    def on_spec_record(self, raw: bytes) -> None:
        try:
            event = decode_event(raw)
        except DecodeError:
            return
        if not isinstance(event, PipelineSaved | PipelineDeleted | PipelineChangeRefused):
            return
        if event.sequence > self.sequences.get(event.name, 0):
            self.sequences[event.name] = event.sequence
            if isinstance(event, PipelineSaved):
                before = self.specs.get(event.name)
                created = before.created_at if before is not None and not event.created else event.occurred_at
                self.specs[event.name] = Stored(event.name, bytes(event.spec), event.user_id, created,
                                                event.occurred_at, event.sequence)
            elif isinstance(event, PipelineDeleted):
                self.specs.pop(event.name, None)
        waiter = self.outcomes.pop(event.causation_id or "", None)
        if waiter is not None and not waiter.done():
            waiter.set_result(event)

    def lookup(self, name: str) -> Stored | None:
        return self.specs.get(name)
