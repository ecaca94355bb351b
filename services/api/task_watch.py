"""The API's tail of `skyjobs.task-events`: answers for waiting add_task calls, and queue lengths.

Every API process reads every partition from the end it found at start, outside any consumer group.
That gives it three things without asking Postgres:

- the ending (answered or failed) of a task an add_task call waits for, one Kafka hop after the
  router wrote it (the projector's NOTIFY would add a batch and a query);
- the number of outstanding tasks per service (submitted, not ended), across all API processes,
  which bounds each service's queue (429);
- the endings of recent tasks, so task_info right after an answer never shows "pending".

Counts start at zero when the process starts: tasks submitted before it are not counted.

The same consumer tails the topics other areas give it (`also`: topic -> handler of each record,
read from the start or from the end), so the API keeps one Kafka tail for all of them: the pipelines
use it for their runs' ends and their specs (services/api/pipeline_watch.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from events.codec import DecodeError, decode_event
from events.tasks import TERMINAL_TYPES, TaskAnswered, TaskFailed
from events.topics import TASK_EVENTS
from services.proxy.view import all_partitions

log = logging.getLogger(__name__)

RECENT_ENDINGS = 10_000
RECENT_BYTES = 32 * 1024 * 1024

Ending = TaskAnswered | TaskFailed


class _Peek(msgspec.Struct):
    type: str
    stream_id: str
    service_id: int = -1


_peek = msgspec.json.Decoder(_Peek)


Handler = Callable[[bytes], None]


class TaskWatch:
    def __init__(self, bootstrap: str, also: dict[str, tuple[Handler, bool]] | None = None) -> None:
        self.bootstrap = bootstrap
        self.also = also or {}  # topic -> (handler, read from the beginning)
        self.caught_up = asyncio.Event()  # the topics read from the beginning are read up to their end at start
        self._catch_up: dict[TopicPartition, int] = {}
        self.waiters: dict[str, asyncio.Future[Ending]] = {}
        self.pending: dict[str, int] = {}  # task id -> service id: submitted, not ended
        self.outstanding: Counter[int] = Counter()
        self.recent: OrderedDict[str, bytes] = OrderedDict()  # task id -> its ending, encoded
        self._recent_bytes = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                        fetch_max_wait_ms=100, max_partition_fetch_bytes=4 * 1024 * 1024)
            try:
                await consumer.start()
                tps = await all_partitions(consumer, [TASK_EVENTS, *self.also], deadline)
                # Explicit offsets, not seek_to_end (resolved lazily at the first fetch): every task
                # this process submits from now on is after them.
                for tp, end in (await consumer.end_offsets(tps)).items():
                    if tp.topic in self.also and self.also[tp.topic][1]:
                        consumer.seek(tp, 0)
                        if end > 0:
                            self._catch_up[tp] = end
                    else:
                        consumer.seek(tp, end)
                if not self._catch_up:
                    self.caught_up.set()
                break
            except KafkaError:
                await consumer.stop()
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        self._consumer = consumer
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._consumer is not None:
            await self._consumer.stop()

    def admit(self, task_id: str, service_id: int, limit: int) -> bool:
        """Count a task about to be submitted, unless its service has `limit` outstanding already."""
        if self.outstanding[service_id] >= limit:
            return False
        self.pending[task_id] = service_id
        self.outstanding[service_id] += 1
        return True

    def abandon(self, task_id: str) -> None:
        """The submission did not reach Kafka: uncount it."""
        self._ended(task_id)
        self.forget(task_id)

    def expect(self, task_id: str) -> asyncio.Future[Ending]:
        """A future for the task's ending; register it before submitting, `forget` it after."""
        future: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()
        self.waiters[task_id] = future
        return future

    def forget(self, task_id: str) -> None:
        self.waiters.pop(task_id, None)

    def ending(self, task_id: str) -> Ending | None:
        raw = self.recent.get(task_id)
        if raw is None:
            return None
        try:
            event = decode_event(raw)
        except DecodeError:
            return None
        return event if isinstance(event, TaskAnswered | TaskFailed) else None

    def _ended(self, task_id: str) -> None:
        service_id = self.pending.pop(task_id, None)
        if service_id is not None:
            self.outstanding[service_id] -= 1
            if self.outstanding[service_id] <= 0:
                del self.outstanding[service_id]

    def _remember(self, task_id: str, raw: bytes) -> None:
        self.recent[task_id] = raw
        self._recent_bytes += len(raw)
        while self.recent and (len(self.recent) > RECENT_ENDINGS or self._recent_bytes > RECENT_BYTES):
            _, dropped = self.recent.popitem(last=False)
            self._recent_bytes -= len(dropped)

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=1000, max_records=5000)
            except KafkaError as exc:
                log.warning("task watch: %r; retrying", exc)
                await asyncio.sleep(1)
                continue
            for tp, records in batch.items():
                handler = self._on_record if tp.topic == TASK_EVENTS else self.also[tp.topic][0]
                for record in records:
                    try:
                        handler(record.value)
                    except Exception:  # one bad record must not stop the tail
                        log.exception("task watch: a record of %s could not be handled", tp.topic)
                if records and tp in self._catch_up and records[-1].offset + 1 >= self._catch_up[tp]:
                    del self._catch_up[tp]
                    if not self._catch_up:
                        self.caught_up.set()

    def _on_record(self, raw: bytes) -> None:
        try:
            head = _peek.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if head.type == "task.submitted.v1":
            if head.stream_id not in self.pending:  # submitted by another API process
                self.pending[head.stream_id] = head.service_id
                self.outstanding[head.service_id] += 1
            return
        if head.type not in TERMINAL_TYPES:
            return
        self._ended(head.stream_id)
        self._remember(head.stream_id, raw)  # decoded only if someone asks
        waiter = self.waiters.get(head.stream_id)
        if waiter is not None and not waiter.done():
            try:
                event = decode_event(raw)
            except DecodeError:
                return
            if isinstance(event, TaskAnswered | TaskFailed):
                waiter.set_result(event)
