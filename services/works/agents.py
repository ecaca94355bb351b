"""The works agents, registered in the job worker's faust app.

    skyjobs.work-commands ──work agent (decide/evolve, table "works")──> skyjobs.work-events
        ^    ^                                                               │
        │    └── scheduler (timer over table "work-schedule": fire-due)      ▼
        │                                                   task runner: task.scheduled → job.run
        └── task tracker: job events of a task's job → work.record-task-job   (job id = task id)
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from datetime import datetime, timedelta
from typing import Any

import faust
import msgspec

from events.base import Command, new_id, utcnow
from events.codec import DecodeError, decode_event, decode_work_command, encode
from events.jobs import (
    CancelJob,
    JobCancelled,
    JobExpired,
    JobFailed,
    JobSucceeded,
    RunJob,
)
from events.topics import WORK_COMMANDS, WORK_EVENTS
from events.works import FireDue, RecordTaskJob, TaskScheduled, WorkDeleted, WorkSpec
from services.config import Config
from services.works import model
from services.works.tasks import task_command

log = logging.getLogger(__name__)

_state_encoder = msgspec.json.Encoder()
_state_decoder = msgspec.json.Decoder(model.Work)
# Only a job's end changes its task (work.task-ended); its start is in the jobs projection already.
_JOB_STATE: dict[type, str] = {JobSucceeded: "succeeded", JobFailed: "failed", JobCancelled: "cancelled",
                               JobExpired: "expired"}
TICK = 0.2  # seconds between scheduler ticks: bounds how late a task fires
REFIRE = timedelta(seconds=10)  # a work still due this long after its fire-due was sent gets another


def register(app: faust.App, config: Config, raw_topic: Any, job_commands: Any, job_events: Any,
             jobs_table: Any, dead_letters: Any) -> None:
    work_commands = raw_topic(WORK_COMMANDS)
    work_events = raw_topic(WORK_EVENTS)
    works = app.Table("works", default=None, partitions=config.partitions, key_type=bytes, value_type=bytes)
    due = app.Table("work-schedule", default=None, partitions=config.partitions, key_type=bytes, value_type=bytes)
    # An index of the "work-schedule" table for the scheduler: (when to look, due value, work key),
    # rebuilt from the table whenever faust has recovered it, pushed to by the work agent. Entries
    # whose due value is no longer the table's are stale and skipped, so a tick costs what is due,
    # not a scan of every work.
    heap: list[tuple[datetime, bytes, bytes]] = []

    @due.on_recover
    async def index_due() -> None:
        heap.clear()
        for key, value in due.items():
            if value:
                heap.append((datetime.fromisoformat(value.decode()), value, key))
        heapq.heapify(heap)

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
                    value = work.next_due.isoformat().encode()
                    if due.get(key) != value:
                        due[key] = value
                        heapq.heappush(heap, (work.next_due, value, key))
                else:
                    due.pop(key, None)

    @app.timer(interval=TICK)
    async def scheduler() -> None:
        now = utcnow()
        while heap and heap[0][0] <= now:
            _, value, key = heapq.heappop(heap)
            if due.get(key) != value:
                continue  # fired, changed or deleted since
            # Look again later: if this fire-due is lost, the work is still due then and is fired again
            # (a repeated fire-due for the same time decides nothing).
            heapq.heappush(heap, (now + REFIRE, value, key))
            await send_work_command(FireDue(command_id=new_id(), stream_id=key.decode(), issued_at=now,
                                            actor="scheduler", due_at=datetime.fromisoformat(value.decode())))

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

    @app.agent(job_events)
    async def task_tracker(stream: Any) -> None:
        async for key, raw in stream.items():
            try:
                event = decode_event(raw)
            except DecodeError:
                continue
            state = _JOB_STATE.get(type(event))
            if state is None:
                continue
            job_raw = jobs_table.get(key)
            labels = msgspec.json.decode(job_raw).get("labels", {}) if job_raw else {}
            work_id, task_id = labels.get("work_id"), labels.get("task_id")
            if work_id and task_id:
                await send_work_command(RecordTaskJob(
                    command_id=new_id(), stream_id=work_id, issued_at=utcnow(), actor="tracker",
                    task_id=task_id, job_state=state, at=event.occurred_at))

