"""The job worker: a faust app with the lifecycle agent, the lease keeper and the works agents.

    skyjobs.job-commands ──lifecycle──> skyjobs.job-events ──> executors (services/jobs/dispatcher.py)
                 ^   (decide/evolve, table "jobs")                 │  start, heartbeat, finish
                 ├────────────────────────────────────────────────┘
                 └── lease keeper (timer over what falls due: ttls, lost executors, retentions)
    a work's task job, once finished ──> skyjobs.work-commands (services/works/agents.py)

Both job topics are keyed by job id with the same partition count, so a worker that owns a
partition of the commands owns the same partition of the events and of the table. Running jobs is
the executors' work, in processes of their own.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import faust
import msgspec

from events import cloudevents
from events.base import Command, new_id, utcnow
from events.codec import DecodeError, decode_command_of, encode
from events.jobs import DeleteJob, ExpireJob, ForgetJob, JobCommand, ReleaseJob
from events.topics import DEAD_LETTERS, JOB_COMMANDS, JOB_EVENTS
from services.config import Config
from services.due_times import DueTimes
from services.jobs import lifecycle
from services.jobs.lifecycle import Job, Policy
from services.kafka import partition_of
from services.works.agents import register as register_works

log = logging.getLogger(__name__)

_state_codec = msgspec.json.Encoder()
_state_decoder = msgspec.json.Decoder(Job)


class _Liveness(msgspec.Struct):
    """The fields of a table value the lease keeper's index needs (msgspec skips the rest)."""

    state: str
    deleted: bool = False
    deadline: datetime | None = None
    lease_until: datetime | None = None
    finished_at: datetime | None = None
    retention: int | None = None


def index_due(due: DueTimes[float], key: bytes, job: Job | _Liveness, policy: Policy) -> None:
    """Put in `due` when the lease keeper may next have to act on the job: its ttl, its executor's
    lease, the end of its retention, the time its state may be forgotten (`lifecycle.due_at`)."""
    at = lifecycle.due_at(job, policy)
    if at is not None:
        due.set(key, at.timestamp())
    else:
        due.discard(key)


_liveness_decoder = msgspec.json.Decoder(_Liveness)
_KEEPER_COMMANDS: dict[str, type[Command]] = {"expire": ExpireJob, "delete": DeleteJob, "forget": ForgetJob}


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
    policy = Policy(lease_timeout=config.lease_timeout, max_attempts=config.max_attempts,
                    retention=config.job_retention or None, forget_after=config.job_forget_after)
    app = faust.App(
        "skyjobs-jobs",
        broker=f"kafka://{config.kafka_bootstrap}",
        store="memory://",
        topic_partitions=config.partitions,
        web_enabled=False,
        producer_acks=-1,
        producer_linger_ms=2,
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
    dead_letters = _raw(app, DEAD_LETTERS, config.partitions)
    jobs = app.Table("jobs", default=None, partitions=config.partitions, key_type=bytes, value_type=bytes)
    # When jobs fall due (ttl, lease, retention): an index of the table (the lease keeper's work list), rebuilt
    # from the table whenever faust has recovered it, kept up to date by the lifecycle agent.
    due = DueTimes[float]()
    job_finished = register_works(app, config, lambda name: _raw(app, name, config.partitions), commands, dead_letters)

    @jobs.on_recover
    async def index_unfinished() -> None:
        due.clear()
        for key, raw in jobs.items():
            if raw:
                index_due(due, key, _liveness_decoder.decode(raw), policy)

    def state_of(key: bytes) -> Job | None:
        raw = jobs.get(key)
        return _state_decoder.decode(raw) if raw else None

    async def send_command(command: Command) -> None:
        await commands.send(key=command.stream_id.encode(), value=encode(command))

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
            now = utcnow()
            if isinstance(command, ForgetJob):
                if job is not None and "forget" in lifecycle.due_commands(job, now, policy):
                    del jobs[key]  # a tombstone in the table's changelog
                    due.discard(key)
                continue
            decided = lifecycle.decide(job, command, now, policy)
            for event in decided:
                job = lifecycle.evolve(job, event, policy)
                await events.send(key=key, value=encode(event))
            if decided and job is not None:
                jobs[key] = _state_codec.encode(job)
                index_due(due, key, job, policy)
            if job is not None and job.finished:  # also after a redelivery, which decides nothing
                await job_finished(job)

    @app.timer(interval=1.0)
    async def lease_keeper() -> None:
        now = utcnow()
        owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == JOB_COMMANDS}
        keys = due.pop_due(now.timestamp())
        for key in keys:  # handed out again a second later unless the job changes meanwhile (or a send fails)
            due.retry(key, now.timestamp() + 1.0)
        for key in keys:
            job = state_of(key)
            if job is None or partition_of(key, config.partitions) not in owned:
                due.discard(key)  # gone, or a copy faust's memory store keeps of a partition given away
                continue
            names = lifecycle.due_commands(job, now, policy)
            for name in names:
                meta: dict[str, Any] = {"command_id": new_id(), "stream_id": job.job_id, "issued_at": now, "actor": "skyjobs"}
                await send_command(ReleaseJob(**meta, attempt=job.attempt) if name == "release"
                                   else _KEEPER_COMMANDS[name](**meta))
            if not names:  # not due after all (the index was behind the table): from the job itself
                due.discard(key)
                index_due(due, key, job, policy)

    return app
