"""What the API follows of the pipelines, on the process's event tail (services/api/tail.py):

- the ends of runs (`pipeline.run-ended` on skyjobs.pipeline-runs): a caller waiting at /p/{name}
  is answered one Kafka hop after the run's last worker wrote it, and `run_ends` (end_watch.py)
  wakes `GET /api/pipeline_runs/{id}?wait=`;
- the specs (skyjobs.pipeline-events): every API process holds every stored pipeline in memory, so
  a call finds its spec without a query and right after its PUT, and a PUT or DELETE learns the
  spec agent's decision (the event its command caused). At start the spec history before the
  tail's positions is read once from Kafka (`load`); from then on the tail brings the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from events.codec import DecodeError, decode_event
from events.pipelines import PipelineChangeRefused, PipelineDeleted, PipelineSaved, RunEnded, SpecEvent
from events.topics import PIPELINE_EVENTS, PIPELINE_RUNS
from services.api.end_watch import RUN_ENDS, EndWatch
from services.api.tail import Batch, EventTail
from services.pipelines.spec import Spec, parse

log = logging.getLogger(__name__)


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
        self.run_ends = EndWatch(PIPELINE_RUNS, RUN_ENDS)  # runs this process saw end recently, and their waiters
        self.caught_up = asyncio.Event()  # the spec history before the tail was read
        self._unfollow: Callable[[], None] | None = None
        self._loading: asyncio.Task[None] | None = None

    def attach(self, tail: EventTail, bootstrap: str) -> None:
        """Follow `tail` (started), and read the spec history before its positions in the background."""
        self._unfollow = tail.follow(self._on_batch)
        ends = {tp: offset for tp, offset in tail.positions.items() if tp[0] == PIPELINE_EVENTS and offset > 0}
        self._loading = asyncio.ensure_future(self.load(bootstrap, ends))

    def detach(self) -> None:
        if self._unfollow is not None:
            self._unfollow()
        if self._loading is not None:
            self._loading.cancel()

    async def load(self, bootstrap: str, ends: dict[tuple[str, int], int]) -> None:
        """Apply the spec events in [0, end) of every partition (retried until it succeeds)."""
        while ends:
            consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
            try:
                await consumer.start()
                remaining = {TopicPartition(*tp): end for tp, end in ends.items()}
                consumer.assign(list(remaining))
                for tp in remaining:
                    consumer.seek(tp, 0)
                while remaining:
                    fetched = await consumer.getmany(*remaining, timeout_ms=1000)
                    for tp, records in fetched.items():
                        for record in records:
                            if record.offset < remaining.get(tp, 0):
                                self.on_spec_record(record.value)
                        if records and records[-1].offset + 1 >= remaining.get(tp, 0):
                            remaining.pop(tp, None)
                break
            except Exception as exc:
                log.warning("pipeline specs: reading their history failed (%r); retrying", exc)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
        self.caught_up.set()

    def _on_batch(self, batch: Batch) -> None:
        for (topic, _), records in batch.items():
            if topic == PIPELINE_RUNS:
                for record in records:
                    self.on_run_record(record.value)
            elif topic == PIPELINE_EVENTS:
                for record in records:
                    self.on_spec_record(record.value)

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
        self.run_ends.end(head.stream_id.encode())
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
