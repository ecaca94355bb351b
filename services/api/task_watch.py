"""What the API learns from `skyjobs.task-events`: answers for waiting add_task calls, and queue lengths.

It follows the process's event tail (tail.py: every partition from the end found at start, outside
any consumer group). That gives it three things without asking Postgres:

- the ending (answered or failed) of a task an add_task call waits for, one Kafka hop after the
  router wrote it (the projector's NOTIFY would add a batch and a query);
- the number of outstanding tasks per service (submitted, not ended), across all API processes,
  which bounds each service's queue (429);
- the endings of recent tasks, so task_info right after an answer never shows "pending".

Counts start at zero when the process starts: tasks submitted before it are not counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable

import msgspec

from events.codec import DecodeError, decode_event
from events.tasks import TERMINAL_TYPES, TaskAnswered, TaskFailed
from events.topics import TASK_EVENTS
from services.api.tail import Batch, EventTail

log = logging.getLogger(__name__)

RECENT_ENDINGS = 10_000
RECENT_BYTES = 32 * 1024 * 1024

Ending = TaskAnswered | TaskFailed


class _Peek(msgspec.Struct):
    type: str
    stream_id: str
    service_id: int = -1


_peek = msgspec.json.Decoder(_Peek)


class TaskWatch:
    def __init__(self) -> None:
        self.waiters: dict[str, asyncio.Future[Ending]] = {}
        self.pending: dict[str, int] = {}  # task id -> service id: submitted, not ended
        self.outstanding: Counter[int] = Counter()
        self.recent: OrderedDict[str, bytes] = OrderedDict()  # task id -> its ending, encoded
        self._recent_bytes = 0
        self._unfollow: Callable[[], None] | None = None

    def attach(self, tail: EventTail) -> None:
        """Follow the tail (started: every task submitted from now on is after its positions)."""
        self._unfollow = tail.follow(self._on_batch)

    def detach(self) -> None:
        if self._unfollow is not None:
            self._unfollow()
            self._unfollow = None

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

    def _on_batch(self, batch: Batch) -> None:
        for (topic, _), records in batch.items():
            if topic == TASK_EVENTS:
                for record in records:
                    self._on_record(record.value)

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
