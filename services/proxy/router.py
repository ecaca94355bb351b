"""The router: a faust app ("skyjobs-proxy") with the registry agent, the task agent and the health checker.

    skyjobs.service-commands ──registry agent──> skyjobs.service-events ──> every RegistryView
         ^        (decide on the view, caught up first)
         └── health checker (timer, on the router that owns the registry's partition): /me of every instance

    skyjobs.task-events ──task consumer──> balancer ──POST <task_path>──> instance
         ^  task.submitted (from the API)                                    │
         └──────────── task.attempt-failed, task.answered | task.failed <────┘

A task.submitted message stays unacknowledged until the task's last event is in Kafka, so a router
that dies mid-task leaves it to the next owner of the partition. Before running what it replays, a
router reads its partitions up to the end they had when it got them: tasks answered meanwhile are
not run twice (the replay gate). The task consumer is plain aiokafka in a faust task, not a faust
agent: see services/consumer.py for the measurement behind that.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from events.base import new_id, utcnow
from events.codec import DecodeError, decode_command, decode_event, encode
from events.files import FileStored
from events.services import REGISTRY_STREAM, ReportProbe, ServiceCommand
from events.tasks import TaskEvent, TaskSubmitted
from events.topics import DEAD_LETTERS, FILE_EVENTS, SERVICE_COMMANDS, SERVICE_EVENTS, TASK_EVENTS
from services.blobs import LocalBlobStore
from services.config import Config
from services.consumer import AckingConsumer, Message
from services.proxy import registry as registry_fold
from services.proxy import tasks
from services.proxy.balancer import Balancer, DeadlinePassed, NoHealthyInstance
from services.proxy.instances import (
    InstanceClient,
    InstanceUnreachable,
    InvalidDescription,
    gather_limited,
    outcome_of,
)
from services.proxy.registry import DOWN, UP, Instance, Registry
from services.proxy.tasks import Answered, Crashed, Errored, Expired, NoInstance, Outcome, Task
from services.proxy.view import RegistryView

log = logging.getLogger(__name__)
TASK_GROUP = "skyjobs-proxy-tasks"  # the routers share the task partitions

APP_ID = "skyjobs-proxy"
MAX_IN_FLIGHT = 10_000  # tasks one router holds at once (queued or running); the agent waits beyond


class FileGone(RuntimeError):
    """A task names a file the blob store no longer has."""

    retryable = False


@dataclass
class _Held:
    """A task this router owns: its submission (args), its folded state and the message to acknowledge."""

    submitted: TaskSubmitted
    task: Task
    message: Any


@dataclass
class _Partitions:
    replay_end: dict[Any, int] = field(default_factory=dict)  # tp -> its end offset when we got it
    held: defaultdict[Any, dict[str, _Held]] = field(default_factory=lambda: defaultdict(dict))
    running: defaultdict[Any, set[asyncio.Task[None]]] = field(default_factory=lambda: defaultdict(set))


class Router:
    """The router's state and behaviour; `create_app` wires it to faust."""

    def __init__(self, config: Config, owns_registry: Callable[[], bool]) -> None:
        self.config = config
        self.settings = config.proxy
        self.producer: AIOKafkaProducer | None = None
        self.owns_registry = owns_registry
        self.view = RegistryView(config.kafka_bootstrap, on_change=self._registry_changed)
        self.balancer = Balancer(lambda: self.view.registry, self.settings.concurrency)
        self.client = InstanceClient()
        self.blobs = LocalBlobStore(config.blob_dir)
        self.parts = _Partitions()
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.probing: set[str] = set()
        self.background: set[asyncio.Future[None]] = set()
        self._starting = asyncio.Lock()
        self._started = False

    async def start(self) -> None:
        """Every agent and timer awaits this first: the registry must be read before deciding anything."""
        async with self._starting:
            while not self._started:
                try:
                    if self.producer is None:
                        # Not faust's producer: its send path cost ~6% of the router's CPU per task.
                        producer = AIOKafkaProducer(
                            bootstrap_servers=self.config.kafka_bootstrap, acks="all", enable_idempotence=True,
                            linger_ms=0, max_batch_size=256 * 1024)
                        try:
                            await producer.start()
                        except BaseException:
                            await producer.stop()
                            raise
                        self.producer = producer
                    await self.view.start()
                    self._started = True
                except (KafkaError, TimeoutError) as exc:  # Kafka not there yet: an agent that raises stays dead
                    log.warning("starting the router failed (%r); retrying", exc)
                    await asyncio.sleep(1)

    async def send(self, topic: str, key: str, value: bytes) -> Any:
        """Produce; returns the future of Kafka's acknowledgement."""
        assert self.producer is not None, "Router.start() first"
        return await self.producer.send(topic, value, key=key.encode())

    async def stop(self) -> None:
        await self.client.close()
        await self.view.stop()
        if self.producer is not None:
            await self.producer.stop()

    # --- registry ---------------------------------------------------------------------------------

    async def handle_registry_command(self, command: ServiceCommand) -> None:
        await self.view.catch_up()
        events = registry_fold.decide(self.view.registry, command, utcnow())
        deliveries = [await self.send(SERVICE_EVENTS, REGISTRY_STREAM, encode(e)) for e in events]
        for delivery in deliveries:
            await delivery
        if events:
            await self.view.catch_up()  # the next command decides on a registry that includes these
            log.info("registry: %s", ", ".join(type(e).__name__ for e in events))

    def _registry_changed(self, registry: Registry) -> None:
        # An instance that went down or was removed is no longer merely suspect: when it comes back
        # up (an event), it gets tasks again.
        for instance_id in list(self.balancer.suspects):
            instance = registry.instances.get(instance_id)
            if instance is None or instance.state == DOWN:
                self.balancer.suspects.discard(instance_id)
        self.balancer.changed()

    async def check_health(self) -> None:
        """Call every instance's /me; report those whose state or description changed."""
        if not self.owns_registry():
            return
        instances = list(self.view.registry.instances.values())
        await gather_limited([self._probe(i) for i in instances], 32)

    def suspect(self, instance: Instance) -> None:
        """A call failed: no tasks for the instance until its /me answers again (checked at once)."""
        self.balancer.suspect(instance.instance_id)
        if instance.instance_id not in self.probing:
            probe = asyncio.ensure_future(self._probe(instance))
            self.background.add(probe)  # a task nobody references may be collected mid-flight
            probe.add_done_callback(self.background.discard)

    async def _probe(self, instance: Instance) -> None:
        if instance.instance_id in self.probing:
            return
        self.probing.add(instance.instance_id)
        try:
            try:
                description = await self.client.describe(instance.url, self.settings.probe_timeout)
            except (InstanceUnreachable, InvalidDescription) as exc:
                if instance.state == UP:
                    await self._report(instance, ok=False, error=str(exc))
                return
            self.balancer.clear(instance.instance_id)
            if instance.state == DOWN or description != instance.description:
                await self._report(instance, ok=True, description=description)
        finally:
            self.probing.discard(instance.instance_id)

    async def _report(self, instance: Instance, ok: bool, description: Any = None, error: str | None = None) -> None:
        command = ReportProbe(command_id=new_id(), stream_id=REGISTRY_STREAM, issued_at=utcnow(), actor="skyjobs-proxy",
                              instance_id=instance.instance_id, ok=ok, description=description, error=error)
        try:
            await self.send(SERVICE_COMMANDS, REGISTRY_STREAM, encode(command))
        except Exception as exc:
            log.warning("could not report the health of %s: %r", instance.url, exc)

    # --- tasks ------------------------------------------------------------------------------------

    async def on_assigned(self, tps: list[Any], ends: dict[Any, int]) -> None:
        for tp in tps:
            self.parts.replay_end[tp] = ends.get(tp, 0)

    def on_revoked(self, tps: set[Any]) -> None:
        """Partitions taken away: their tasks are the next owner's (it replays them), stop ours."""
        for tp in tps:
            self.parts.replay_end.pop(tp, None)
            self.parts.held.pop(tp, None)
            for runner in self.parts.running.pop(tp, set()):
                runner.cancel()

    async def on_message(self, message: Message) -> None:
        """One message of skyjobs.task-events, to acknowledge once handled (for a task: once it ended)."""
        tp, offset = message.tp, message.offset
        try:
            event = decode_event(message.value)
        except DecodeError as exc:
            log.error("skipping undecodable task event at %s@%s: %s", tp, offset, exc)
            message.ack()
            return
        replay_end = self.parts.replay_end.get(tp)
        if isinstance(event, TaskSubmitted):
            held = _Held(event, tasks.evolve(None, event), message)
            if replay_end is not None and offset < replay_end:
                self.parts.held[tp][event.stream_id] = held  # it may have been answered already: read on
            else:
                await self._start(tp, held)
        else:
            message.ack()
            held_task = self.parts.held.get(tp, {}).get(event.stream_id) if isinstance(event, TaskEvent) else None
            if held_task is not None and isinstance(event, TaskEvent):
                updated = tasks.apply(held_task.task, event)
                assert updated is not None
                held_task.task = updated
                if updated.finished:
                    del self.parts.held[tp][event.stream_id]
                    held_task.message.ack()
        if replay_end is not None and offset >= replay_end - 1:
            del self.parts.replay_end[tp]
            replayed = self.parts.held.pop(tp, {})
            if replayed:
                log.info("resuming %d unfinished task(s) of %s", len(replayed), tp)
            for held in replayed.values():
                await self._start(tp, held)

    async def _start(self, tp: Any, held: _Held) -> None:
        await self.slots.acquire()
        runner = asyncio.ensure_future(self._run(held))
        running = self.parts.running[tp]
        running.add(runner)
        runner.add_done_callback(running.discard)

    async def _run(self, held: _Held) -> None:
        """Run the task to its end; a fault of the router's own fails it (with what was raised) rather
        than leaving it, and the partition's commits behind it, unfinished until the next restart."""
        try:
            try:
                await self._attempts(held)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("task %s failed in the router", held.task.task_id)
                await self._record(held, Crashed(f"the router failed while handling the task: {exc!r}"))
            held.message.ack()
        finally:
            self.slots.release()

    async def _attempts(self, held: _Held) -> None:
        task = held.task
        deadline = time.monotonic() + (task.deadline - utcnow()).total_seconds()
        tried: set[str] = set()
        try:
            body = await self._body(held.submitted)
        except FileGone as exc:
            await self._record(held, Errored(None, str(exc), retryable=False))
            return
        while not task.finished:
            outcome: Outcome
            if time.monotonic() >= deadline:  # e.g. replayed after the router was down for longer than the ttl
                task = await self._record(held, Expired())
                break
            try:
                instance = await self.balancer.acquire(task.service_id, tried, deadline, self.settings.no_instance_wait)
            except NoHealthyInstance:
                outcome = NoInstance(f"no healthy instance of service {task.service_id}")
            except DeadlinePassed:
                outcome = Expired()
            else:
                try:
                    outcome = await self._call(instance, task, body)
                finally:
                    self.balancer.release(instance.instance_id, task.service_id)
            task = await self._record(held, outcome)
            if isinstance(outcome, Errored) and not task.finished and outcome.instance_id:
                tried.add(outcome.instance_id)
                await asyncio.sleep(tasks.backoff(task.attempts, self.settings.backoff))

    async def _record(self, held: _Held, outcome: Outcome) -> Task:
        task = held.task
        events = tasks.decide(task, outcome, utcnow(), self.settings.max_attempts)
        for event in events:
            task = tasks.evolve(task, event)
        await self._emit([(TASK_EVENTS, task.task_id, encode(e)) for e in events])
        held.task = task
        return task

    async def _emit(self, messages: list[tuple[str, str, bytes]]) -> None:
        """Produce and wait for Kafka's acknowledgement, retrying while Kafka is away."""
        delay = 0.2
        while True:
            try:
                deliveries = [await self.send(topic, key, value) for topic, key, value in messages]
                for delivery in deliveries:
                    await delivery
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("producing %d event(s) failed (%r); retrying in %.1f s", len(messages), exc, delay)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    async def _body(self, submitted: TaskSubmitted) -> bytes:
        args: list[Any] = []
        for value, kind in zip(submitted.args, submitted.types, strict=False):
            if kind not in ("image", "file"):
                args.append(value)
            elif "data" in value:
                args.append(value["data"])
            else:
                data = await asyncio.to_thread(self._read_blob, value["file_id"])
                args.append(base64.b64encode(data).decode())
        return orjson.dumps({"task_id": submitted.stream_id, "args": args})

    def _read_blob(self, file_id: str) -> bytes:
        path = self.blobs.path(file_id)
        if path is None:
            raise FileGone(f"file {file_id} is no longer stored")
        return path.read_bytes()

    async def _call(self, instance: Instance, task: Task, body: bytes) -> Outcome:
        path = instance.description.task_path if instance.description else "/run"
        try:
            status, answer = await self.client.run(instance.url, path, body, self.settings.call_timeout, task.task_id)
        except InstanceUnreachable as exc:
            self.suspect(instance)
            return Errored(instance.instance_id, str(exc))
        outcome = outcome_of(instance.instance_id, status, answer)
        if isinstance(outcome, Errored) and outcome.retryable and status >= 500:
            self.suspect(instance)
        if isinstance(outcome, Answered) and len(answer) > self.settings.inline_limit:
            file_id = await self._store_answer(task, answer)
            outcome = Answered(instance.instance_id, b"null", file_id)
        return outcome

    async def _store_answer(self, task: Task, answer: bytes) -> str:
        file_id = new_id()
        size, sha256 = await asyncio.to_thread(self.blobs.put_bytes, file_id, answer)
        stored = FileStored(event_id=new_id(), stream_id=file_id, sequence=1, occurred_at=utcnow(),
                            correlation_id=task.correlation_id or task.task_id, actor=APP_ID, owner_id=task.user_id,
                            name=f"task-{task.task_id}-answer.json", size=size, sha256=sha256,
                            content_type="application/json")
        await self._emit([(FILE_EVENTS, file_id, encode(stored))])
        return file_id


def registry_partition(partitions: int) -> int:
    """The partition of the registry's key (the producers' murmur2 partitioner)."""
    return int((murmur2(REGISTRY_STREAM.encode()) & 0x7FFFFFFF) % partitions)


def _raw(app: faust.App, name: str, partitions: int) -> Any:
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                     partitions=partitions)


def create_app(config: Config) -> faust.App:
    app = faust.App(
        APP_ID,
        broker=f"kafka://{config.kafka_bootstrap}",
        store="memory://",
        topic_partitions=config.partitions,
        web_enabled=False,
        producer_acks=-1,
        producer_linger=0.0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10,
        broker_heartbeat_interval=2,
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        table_standby_replicas=0,
        topic_disable_leader=True,
        key_serializer="raw",
        value_serializer="raw",
    )
    topics = {name: _raw(app, name, config.partitions)
              for name in (SERVICE_COMMANDS, SERVICE_EVENTS, TASK_EVENTS, FILE_EVENTS, DEAD_LETTERS)}
    owner_tp = (SERVICE_COMMANDS, registry_partition(config.partitions))

    def owns_registry() -> bool:
        return any((tp.topic, tp.partition) == owner_tp for tp in app.consumer.assignment())

    router = Router(config, owns_registry)

    @app.agent(topics[SERVICE_COMMANDS])
    async def registry_agent(stream: Any) -> None:
        await router.start()
        async for key, raw in stream.items():
            try:
                command = decode_command(raw)
                if not isinstance(command, ServiceCommand) or key != command.stream_id.encode():
                    raise DecodeError(f"not a registry command for key {key!r}")
            except DecodeError as exc:
                await topics[DEAD_LETTERS].send(key=key, value=raw, headers={"skyjobs_reason": str(exc).encode()})
                continue
            try:
                await router.handle_registry_command(command)
            except Exception:  # an agent that raises stops; the command is lost either way, say so
                log.exception("registry command %s failed", command.command_id)

    @app.task
    async def task_consumer() -> None:
        await router.start()
        try:
            await AckingConsumer(config.kafka_bootstrap, TASK_EVENTS, TASK_GROUP, router).run()
        finally:  # the worker is stopping
            await router.stop()

    @app.timer(interval=config.proxy.health_interval)
    async def health_checker() -> None:
        await router.start()
        await router.check_health()

    app.skyjobs_router = router  # type: ignore[attr-defined]
    return app
