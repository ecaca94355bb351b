"""The works agents, registered in the job worker's faust app.

    skyjobs.work-commands ──work agent (decide/evolve, table "works")──> skyjobs.work-events
        ^    ^                                                               │
        │    └── scheduler (timer over a due-time heap of the works table)   ▼
        │                                                   task runner: task.scheduled → job.run
        └── the lifecycle agent, when a task's job has finished: work.record-task-job   (job id = task id)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import faust
import msgspec

from events.base import Command, new_id, utcnow
from events.codec import DecodeError, decode_event, decode_work_command, encode
from events.jobs import CancelJob, RunJob
from events.topics import WORK_COMMANDS, WORK_EVENTS
from events.works import FireDue, RecordTaskJob, TaskScheduled, WorkDeleted, WorkSpec
from services.config import Config
from services.due_times import DueTimes
from services.jobs.lifecycle import Job
from services.works import model
from services.works.tasks import task_command

log = logging.getLogger(__name__)

_state_encoder = msgspec.json.Encoder()
_state_decoder = msgspec.json.Decoder(model.Work)


class _Timing(msgspec.Struct):
    """The fields of a works table value the scheduler's index needs (msgspec skips the rest)."""

    next_due: datetime | None = None
    deleted_at: datetime | None = None


_timing_decoder = msgspec.json.Decoder(_Timing)
TICK = 0.2  # seconds between scheduler ticks: bounds how late a task fires
RETRY = timedelta(seconds=1)  # a fire-due that could not be sent is sent again this much later


def register(app: faust.App, config: Config, raw_topic: Any, job_commands: Any,
             dead_letters: Any) -> Callable[[Job], Awaitable[None]]:
    """The works agents in `app`; returns what the lifecycle agent calls when a job has finished."""
    work_commands = raw_topic(WORK_COMMANDS)
    work_events = raw_topic(WORK_EVENTS)
    works = app.Table("works", default=None, partitions=config.partitions, key_type=bytes, value_type=bytes)
    # The scheduler's index of the works table: each work's due time, rebuilt from the table whenever
    # faust has recovered it and kept up to date by the work agent; a tick costs what is due.
    due = DueTimes[datetime]()

    @works.on_recover
    async def index_due() -> None:
        due.clear()
        for key, raw in works.items():
            if raw and (timing := _timing_decoder.decode(raw)).next_due is not None and timing.deleted_at is None:
                due.set(key, timing.next_due)

    def work_of(key: bytes) -> model.Work | None:
        raw = works.get(key)
        return _state_decoder.decode(raw) if raw else None

    async def send_work_command(command: Command) -> None:
        await work_commands.send(key=command.stream_id.encode(), value=encode(command))

    @app.agent(work_commands)
    async def work_agent(stream: Any) -> None:
        async for key, raw in stream.items():
            try:
                command = decode_work_command(raw)
                if key != command.stream_id.encode():
                    raise DecodeError(f"key {key!r} differs from stream_id {command.stream_id!r}")
            except DecodeError as exc:
                await dead_letters.send(key=key, value=raw, headers={"skyjobs_reason": str(exc).encode()})
                continue
            work = work_of(key)
            decided = model.decide(work, command, utcnow())
            for event in decided:
                work = model.evolve(work, event)
                await work_events.send(key=key, value=encode(event))
            if decided and work is not None:
                works[key] = _state_encoder.encode(work)
                if work.next_due is not None and work.deleted_at is None:
                    due.set(key, work.next_due)
                else:
                    due.discard(key)

    @app.timer(interval=TICK)
    async def scheduler() -> None:
        now = utcnow()
        keys = due.pop_due(now)
        for i, key in enumerate(keys):
            due_at = due.get(key)
            assert due_at is not None
            try:
                await send_work_command(FireDue(command_id=new_id(), stream_id=key.decode(), issued_at=now,
                                                actor="scheduler", due_at=due_at))
            except Exception:  # try again at a later tick (a repeated fire-due for the same time decides nothing)
                due.retry(key, now + RETRY)
                for rest in keys[i + 1:]:  # not tried yet: at the next tick
                    due.retry(rest, now)
                raise

    @app.agent(work_events)
    async def task_runner(stream: Any) -> None:
        async for raw in stream:
            try:
                event = decode_event(raw)
            except DecodeError:
                continue
            if isinstance(event, TaskScheduled):
                work = work_of(event.stream_id.encode())
                if work is not None:
                    await _start_task(work.spec, event)
                for task_id in event.cancel_tasks:
                    await _cancel(task_id, f"replaced by task {event.task_id} (overlap policy cancel_previous)")
            elif isinstance(event, WorkDeleted):
                for task_id in event.cancel_tasks:
                    await _cancel(task_id, "its work was deleted")

    async def _start_task(spec: WorkSpec, event: TaskScheduled) -> None:
        if spec.category == "SHELL":
            command, binary, inputs = task_command(spec, config)
        else:  # Flink's jars may have to be fetched first
            command, binary, inputs = await asyncio.to_thread(task_command, spec, config)
        job_id = model.job_id_of(event.task_id)
        await job_commands.send(key=job_id.encode(), value=encode(RunJob(
            command_id=new_id(), stream_id=job_id, issued_at=event.occurred_at, actor=event.actor or spec.user_id,
            correlation_id=event.correlation_id, user_id=spec.user_id, command=command, binary=binary,
            input_files=inputs, ttl=spec.ttl, labels={"work_id": event.stream_id, "task_id": event.task_id},
        )))

    async def _cancel(task_id: str, reason: str) -> None:
        job_id = model.job_id_of(task_id)
        await job_commands.send(key=job_id.encode(), value=encode(CancelJob(
            command_id=new_id(), stream_id=job_id, issued_at=utcnow(), actor="scheduler", reason=reason)))

    async def job_finished(job: Job) -> None:
        """Called by the lifecycle agent after any command for a finished job: a task's job tells its
        work (again, after a redelivery: the work ignores an end it has recorded)."""
        work_id, task_id = job.labels.get("work_id"), job.labels.get("task_id")
        if work_id and task_id and job.finished_at is not None:
            await send_work_command(RecordTaskJob(
                command_id=new_id(), stream_id=work_id, issued_at=utcnow(), actor="tracker",
                task_id=task_id, job_state=job.state, at=job.finished_at))

    return job_finished
