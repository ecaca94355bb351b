"""The job worker: a faust app with the lifecycle agent, the lease keeper and the executor agent.

    skyjobs.job-commands ──lifecycle──> skyjobs.job-events ──executor──> commands (start, finish)
                 ^   (decide/evolve, table "jobs")                 └──> skyjobs.file-events (outputs)
                 └── lease keeper (timer over table "active": ttl and lost executors)

Both job topics are keyed by job id with the same partition count, so a worker that owns a
partition of the commands owns the same partition of the events and of the tables.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
import msgspec

from events import cloudevents
from events.base import Command, new_id, utcnow
from events.codec import DecodeError, decode_command_of, decode_event, encode
from events.files import FilePurged, FileStored
from events.jobs import STOP_EVENTS, ExpireJob, JobCommand, JobDeleted, JobRequeued, JobSubmitted, ReleaseJob
from events.topics import DEAD_LETTERS, FILE_EVENTS, JOB_COMMANDS, JOB_EVENTS
from services.blobs import LocalBlobStore
from services.config import Config
from services.jobs import lifecycle
from services.jobs.executor import Executor
from services.jobs.lifecycle import QUEUED, Job, Policy
from services.works.agents import register as register_works

log = logging.getLogger(__name__)

_state_codec = msgspec.json.Encoder()
_state_decoder = msgspec.json.Decoder(Job)

# Executors hold a job's event unacknowledged until the job ends, so a worker that dies mid-job
# gets the event redelivered to the next owner of the partition; this bounds what one worker buffers.
MAX_PENDING = 10_000


class CloudEventsTopic(faust.Topic):  # type: ignore[misc]
    """A faust topic whose messages carry the CloudEvents Kafka-binding headers."""

    async def send(self, *args: Any, value: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        if isinstance(value, bytes):
            headers = [*(headers.items() if isinstance(headers, dict) else headers or []),
                       *cloudevents.headers(value)]
        return await super().send(*args, value=value, headers=headers, **kwargs)


def _raw(app: faust.App, name: str, partitions: int) -> Any:
    return CloudEventsTopic(app, topics=[name], key_type=bytes, value_type=bytes, key_serializer="raw",
                            value_serializer="raw", partitions=partitions)


def create_app(config: Config) -> faust.App:
    policy = Policy(lease_timeout=config.lease_timeout, max_attempts=config.max_attempts)
    app = faust.App(
        "skyjobs-jobs",
        broker=f"kafka://{config.kafka_bootstrap}",
        store="memory://",
        topic_partitions=config.partitions,
        web_enabled=False,
        producer_acks=-1,
        producer_linger_ms=1,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=15,
        broker_heartbeat_interval=3,
        stream_wait_empty=False,
        table_standby_replicas=0,
        topic_disable_leader=True,
        key_serializer="raw",
        value_serializer="raw",
    )
    commands = _raw(app, JOB_COMMANDS, config.partitions)
    events = _raw(app, JOB_EVENTS, config.partitions)
    files = _raw(app, FILE_EVENTS, config.partitions)
    dead_letters = _raw(app, DEAD_LETTERS, config.partitions)
    jobs = app.Table("jobs", default=None, partitions=config.partitions, key_type=bytes, value_type=bytes)
    active = app.Table("active-jobs", default=None, partitions=config.partitions, key_type=bytes,
                       value_type=bytes)

    def state_of(key: bytes) -> Job | None:
        raw = jobs.get(key)
        return _state_decoder.decode(raw) if raw else None

    async def send_command(command: Command) -> None:
        await commands.send(key=command.stream_id.encode(), value=encode(command))

    async def publish_file(event: FileStored) -> None:
        await files.send(key=event.stream_id.encode(), value=encode(event))

    executor = Executor(config, LocalBlobStore(config.blob_dir), send_command, publish_file)

    @app.agent(commands)
    async def lifecycle_agent(stream: Any) -> None:
        async for key, raw in stream.items():
            try:
                command = decode_command_of(raw, JobCommand)
                if key != command.stream_id.encode():
                    raise DecodeError(f"key {key!r} differs from stream_id {command.stream_id!r}")
            except DecodeError as exc:
                await dead_letters.send(key=key, value=raw, headers={"skyjobs_reason": str(exc).encode()})
                continue
            job = state_of(key)
            decided = lifecycle.decide(job, command, utcnow(), policy)
            for event in decided:
                job = lifecycle.evolve(job, event, policy)
                await events.send(key=key, value=encode(event))
            if decided and job is not None:
                jobs[key] = _state_codec.encode(job)
                if job.finished or job.deleted:
                    active.pop(key, None)
                else:
                    active[key] = b"1"

    @app.timer(interval=1.0)
    async def lease_keeper() -> None:
        now = utcnow()
        for key in list(active.keys()):
            job = state_of(key)
            if job is None:
                continue
            for due in lifecycle.due_commands(job, now):
                meta: dict[str, Any] = {"command_id": new_id(), "stream_id": job.job_id, "issued_at": now, "actor": "skyjobs"}
                command = ExpireJob(**meta) if due == "expire" else ReleaseJob(**meta, attempt=job.attempt)
                await send_command(command)

    pending: asyncio.Queue[tuple[Job, Any]] = asyncio.Queue(MAX_PENDING)

    @app.agent(events)
    async def executor_agent(stream: Any) -> None:
        async for event in stream.noack().events():
            try:
                message = decode_event(event.value)
            except DecodeError:
                event.ack()
                continue
            if isinstance(message, JobSubmitted | JobRequeued):
                job = state_of(event.key)
                attempt = message.attempt if isinstance(message, JobRequeued) else 1
                if job is not None and job.state == QUEUED and job.attempt == attempt:
                    await pending.put((job, event))  # acknowledged when the job ends
                    continue
            elif isinstance(message, STOP_EVENTS):
                executor.stop(message.stream_id, _stop_reason(message))
                if isinstance(message, JobDeleted):
                    await purge_outputs(message)
            event.ack()

    async def purge_outputs(deleted: JobDeleted) -> None:
        """A deleted job's stored output goes too: bytes from the store, then a purge event."""
        for file_id in (deleted.answer_id, deleted.stderr_id):
            if file_id:
                executor.blobs.delete(file_id)
                await files.send(key=file_id.encode(), value=encode(FilePurged(
                    event_id=new_id(), stream_id=file_id, sequence=2, occurred_at=deleted.occurred_at,
                    correlation_id=deleted.correlation_id, causation_id=deleted.event_id, actor=deleted.actor,
                    reason=f"job {deleted.stream_id} was deleted")))

    async def run_one(job: Job, event: Any, slots: asyncio.Semaphore) -> None:
        try:
            current = state_of(event.key)  # it may have been cancelled while it waited for a slot
            if current is not None and current.state == QUEUED and current.attempt == job.attempt:
                await executor.run(current)
        except Exception:
            log.exception("job %s failed in the executor", job.job_id)
        finally:
            slots.release()
            event.ack()

    @app.task
    async def dispatcher() -> None:
        slots = asyncio.Semaphore(config.executor_slots)
        while True:
            job, event = await pending.get()
            await slots.acquire()
            asyncio.ensure_future(run_one(job, event, slots))

    @app.task
    async def heartbeats() -> None:
        await executor.heartbeat_forever()

    register_works(app, config, lambda name: _raw(app, name, config.partitions), commands, events, jobs, dead_letters)
    return app


def _stop_reason(message: Any) -> str:
    return str(getattr(message, "reason", None) or message.__class__.__name__)
