"""The executor process (`skyjobs executor`): runs the queued jobs of its share of the job partitions.

    skyjobs.job-events ──(group skyjobs-executors)──> dispatcher ──> executor slots
                                                                      ├──> skyjobs.job-commands (start, heartbeat, finish)
                                                                      └──> skyjobs.file-events (outputs)

Each executor process owns some partitions of skyjobs.job-events. It folds the events of every
unfinished job in them (the lifecycle's own `evolve`), runs the queued ones in its slots, stops the
ones that are cancelled, expired, deleted or requeued, and acknowledges a job's `job.submitted`
message only when the job's final event is in the log. So an executor that dies leaves its jobs to
the next owner of the partition, which first reads up to the end the partition had when it got it:
jobs finished meanwhile are not run again, jobs it finds queued are run.

Executors are separate from the lifecycle agent (services/jobs/worker.py) so that forking jobs and
their file I/O never stall deciding, and so that more of them run on more cores and machines.
A job whose partition moves to another executor while it runs goes on here; its stop events are then
read by a small watcher until it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from events.base import Command, new_id
from events.codec import DecodeError, decode_event, encode
from events.files import FilePurged, FileStored
from events.jobs import STOP_EVENTS, JobDeleted, JobRequeued, JobStarted, JobSubmitted
from events.topics import FILE_EVENTS, JOB_COMMANDS, JOB_EVENTS
from services.blobs import LocalBlobStore
from services.config import Config
from services.consumer import AckingConsumer, Message
from services.jobs import lifecycle
from services.jobs.executor import Executor
from services.jobs.lifecycle import QUEUED, Job
from services.kafka import CommandBus, until_acknowledged

log = logging.getLogger(__name__)

GROUP = "skyjobs-executors"


@dataclass
class _Held:
    job: Job  # folded from the job's events since its job.submitted
    message: Message  # the job.submitted message, acknowledged when the job ends


class Dispatcher:
    """The consumer handler: folds unfinished jobs per partition and keeps the slots busy."""

    def __init__(self, config: Config, executor: Executor, bus: CommandBus) -> None:
        self.config = config
        self.executor = executor
        self.bus = bus
        self.held: dict[TopicPartition, dict[str, _Held]] = {}
        self.replay_end: dict[TopicPartition, int] = {}
        self.position: dict[TopicPartition, int] = {}
        self.waiting: deque[tuple[TopicPartition, str]] = deque()
        self.busy: dict[str, int] = {}  # job id -> the attempt running here
        self.orphans: dict[str, TopicPartition] = {}  # running here, partition now elsewhere
        self._watcher: asyncio.Future[None] | None = None

    # --- the consumer's callbacks ------------------------------------------------------------------

    async def on_assigned(self, tps: list[TopicPartition], ends: dict[TopicPartition, int]) -> None:
        for tp in tps:
            self.held[tp] = {}
            if ends.get(tp, 0) > 0:
                self.replay_end[tp] = ends[tp]

    def on_revoked(self, tps: set[TopicPartition]) -> None:
        """Partitions taken away: their queued jobs are the next owner's; running ones go on here."""
        watch: dict[TopicPartition, int] = {}
        for tp in tps:
            self.replay_end.pop(tp, None)
            for job_id in self.held.pop(tp, {}):
                if job_id in self.busy and tp in self.position:
                    self.orphans[job_id] = tp
                    watch[tp] = self.position[tp]
        if watch and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.ensure_future(self._watch_orphans(watch))

    async def on_message(self, message: Message) -> None:
        tp = message.tp
        self.position[tp] = message.offset + 1
        held = self.held.get(tp)
        try:
            event = decode_event(message.value)
        except DecodeError as exc:
            log.error("skipping undecodable job event at %s@%s: %s", tp, message.offset, exc)
            event = None
        end = self.replay_end.get(tp)
        replaying = end is not None and message.offset < end
        if isinstance(event, JobSubmitted) and held is not None:
            held[event.stream_id] = _Held(lifecycle.evolve(None, event), message)
            if not replaying:
                self.waiting.append((tp, event.stream_id))
        else:
            message.ack()
            if isinstance(event, JobDeleted):
                await self._purge_outputs(event)
            if event is not None and held is not None and (entry := held.get(event.stream_id)) is not None:
                self._follow(tp, entry, event, replaying)
        if end is not None and message.offset >= end - 1:
            del self.replay_end[tp]  # caught up: what is still queued is ours to run
            self.waiting.extend((tp, job_id) for job_id, entry in (held or {}).items() if entry.job.state == QUEUED)
        self._fill_slots()

    # --- jobs --------------------------------------------------------------------------------------

    def _follow(self, tp: TopicPartition, entry: _Held, event: object, replaying: bool) -> None:
        job_id = entry.job.job_id
        entry.job = lifecycle.evolve(entry.job, event)  # type: ignore[arg-type]
        if entry.job.finished or entry.job.deleted:
            del self.held[tp][job_id]
            entry.message.ack()
        self._stop_if_needed(job_id, event)
        if isinstance(event, JobRequeued) and not replaying:
            self.waiting.append((tp, job_id))

    def _stop_if_needed(self, job_id: str, event: object) -> None:
        attempt = self.busy.get(job_id)
        if attempt is None:
            return
        if isinstance(event, STOP_EVENTS):
            self.executor.stop(job_id, str(getattr(event, "reason", None) or type(event).__name__))
        elif isinstance(event, JobRequeued):
            self.executor.stop(job_id, f"lease lost; attempt {event.attempt} runs instead")
        elif isinstance(event, JobStarted) and event.attempt == attempt and event.executor_id != self.executor.executor_id:
            self.executor.stop(job_id, f"attempt {attempt} runs on {event.executor_id}")

    def _fill_slots(self) -> None:
        while self.waiting and len(self.busy) < self.config.executor_slots:
            tp, job_id = self.waiting.popleft()
            entry = self.held.get(tp, {}).get(job_id)
            if entry is None or entry.job.state != QUEUED or job_id in self.busy:
                continue  # gone, cancelled, started elsewhere, or its previous attempt still stopping
            self.busy[job_id] = entry.job.attempt
            asyncio.ensure_future(self._run(tp, entry.job))

    async def _run(self, tp: TopicPartition, job: Job) -> None:
        try:
            await self.executor.run(job)
        except Exception:
            log.exception("job %s failed in the executor", job.job_id)
        finally:
            self.busy.pop(job.job_id, None)
            self.orphans.pop(job.job_id, None)
            entry = self.held.get(tp, {}).get(job.job_id)
            if entry is not None and entry.job.state == QUEUED and entry.job.attempt != job.attempt:
                self.waiting.appendleft((tp, job.job_id))  # requeued while this attempt was stopping
            self._fill_slots()

    async def _purge_outputs(self, deleted: JobDeleted) -> None:
        """A deleted job's stored output goes too: bytes from the store, then a purge event."""
        for file_id in (deleted.answer_id, deleted.stderr_id):
            if file_id:
                self.executor.blobs.delete(file_id)
                purged = encode(FilePurged(
                    event_id=new_id(), stream_id=file_id, sequence=2, occurred_at=deleted.occurred_at,
                    correlation_id=deleted.correlation_id, causation_id=deleted.event_id, actor=deleted.actor,
                    reason=f"job {deleted.stream_id} was deleted"))
                await until_acknowledged(functools.partial(self.bus.send, FILE_EVENTS, file_id, purged),
                                         f"file.purged of {file_id}")

    async def _watch_orphans(self, start: dict[TopicPartition, int]) -> None:
        """Read stop events of jobs still running here whose partitions moved, until they end."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.config.kafka_bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=200)
        try:
            await consumer.start()
            consumer.assign(list(start))
            for tp, offset in start.items():
                consumer.seek(tp, offset)
            while self.orphans:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        if record.key is not None and record.key.decode() in self.orphans:
                            with contextlib.suppress(DecodeError):
                                self._stop_if_needed(record.key.decode(), decode_event(record.value))
        except Exception as exc:
            log.warning("watching moved jobs failed: %r", exc)
        finally:
            await consumer.stop()


async def run(config: Config) -> None:
    """The executor process: consume job events until cancelled."""
    bus = CommandBus(config.kafka_bootstrap, config.kafka_timeout, linger_ms=2)
    await bus.start()

    async def send_command(command: Command) -> None:
        await bus.send(JOB_COMMANDS, command.stream_id, encode(command))

    async def publish_file(event: FileStored) -> None:
        await bus.send(FILE_EVENTS, event.stream_id, encode(event))

    executor = Executor(config, LocalBlobStore(config.blob_dir), send_command, publish_file)
    try:
        await AckingConsumer(config.kafka_bootstrap, JOB_EVENTS, GROUP, Dispatcher(config, executor, bus),
                             fetch_max_wait_ms=20).run()
    finally:
        await bus.stop()
