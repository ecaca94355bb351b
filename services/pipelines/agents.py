"""The pipeline workers: `skyjobs pipelines`, one or many (a faust app, "skyjobs-pipelines").

    API ── pipeline.continue (the run's first token) ──> skyjobs.pipeline-work ──work consumer──> steps (HTTP)
                          ^                                                          │
                          └──── forked tokens (key: run + token: spread) ────────────┤
    skyjobs.pipeline-parts <── pipeline.arrive (key: run) ───────────────────────────┤
       └──parts consumer: joiners and the run's end, table skyjobs.pipeline-joins     │
                └──> joined token (pipeline-work), pipeline.run-ended ──> skyjobs.pipeline-runs ──> API
    skyjobs.pipeline-steps <── step-requested / step-responded ───────────────────────┘
    skyjobs.pipeline-commands ──spec agent (faust table "pipeline-specs")──> skyjobs.pipeline-events

Work consumer (a plain aiokafka group, services/consumer.py; faust's fetcher cost a millisecond a
hop and most of the throughput, measured in BENCHMARKS.md): a token's message stays unacknowledged
until everything it led to is in Kafka, so a worker that dies mid-run leaves the token to the next
owner of its partition, which runs it again. Before a token attempt's first unsafe request the
journal (services/pipelines/journal.py) records it, durably; the next owner then knows what may
have been sent (services/pipelines/executor.py). A token that made unsafe requests is marked done
before it is acknowledged, so a redelivered copy is skipped. Forked children whose key lands on the
partition being worked run here at once.

Parts consumer (plain aiokafka too): the arrivals at one accounting point are kept in the joins
table (services/pipelines/tables.py: a compacted topic, restored per partition, as a faust table
is) until their credits add up to 1 (services/pipelines/flow.py), then joined; a duplicate arrival is recognised by its token
id. A timer in every worker sends `expired` for the points of its partitions whose run is past its
deadline: the run fails with 504 instead of waiting for ever.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable
from fractions import Fraction
from functools import lru_cache
from typing import Any

import faust
import msgspec
import orjson
from aiokafka import AIOKafkaProducer, TopicPartition

from events.base import new_id, utcnow
from events.codec import DecodeError, decode_command_of, encode
from events.files import FileStored
from events.pipelines import (
    Arrive,
    Body,
    ContinueRun,
    PipelineCommand,
    RunEnded,
    RunFannedOut,
    RunJoined,
    RunStarted,
)
from events.pipelines import Token as WireToken
from events.topics import (
    DEAD_LETTERS,
    FILE_EVENTS,
    PIPELINE_COMMANDS,
    PIPELINE_EVENTS,
    PIPELINE_JOINS,
    PIPELINE_JOURNAL,
    PIPELINE_PARTS,
    PIPELINE_RUNS,
    PIPELINE_STEPS,
    PIPELINE_WORK,
)
from services.blobs import LocalBlobStore
from services.config import Config
from services.consumer import AckingConsumer
from services.consumer import Message as Record
from services.kafka import partition_of, until_acknowledged
from services.pipelines import catalog
from services.pipelines import journal as journals
from services.pipelines.executor import Executor, Run, Runs, credit0, step_event
from services.pipelines.flow import (
    END,
    Arrival,
    Caller,
    Failed,
    Flow,
    Fork,
    Point,
    Settings,
    Token,
    answer,
    joined_token,
)
from services.pipelines.journal import Journal
from services.pipelines.messages import Message, error_message
from services.pipelines.settings import from_env
from services.pipelines.spec import Spec, parse
from services.pipelines.tables import ChangelogTable
from services.pipelines.transport import HttpTransport
from services.pipelines.wire import Bodies

log = logging.getLogger(__name__)

APP_ID = "skyjobs-pipelines"
ACTOR = "skyjobs-pipelines"
MAX_IN_FLIGHT = 5000  # tokens one worker runs at once; the work agent waits beyond
WORK_GROUP = "skyjobs-pipelines-work"
PARTS_GROUP = "skyjobs-pipelines-parts"
TOKEN_RETRY_FIRST, TOKEN_RETRY_LAST = 0.5, 5.0  # seconds before a token that failed in the worker runs again
REVOKE_WAIT = 5.0  # seconds a rebalance waits for the tokens in flight of the partitions it moves
ENDED_KEPT = 60.0  # seconds an ended run's end point is kept after its deadline (late arrivals are dropped)
# How long an audit event (a run's start, a step's request and response, a fan-out) may wait for the
# token's next record that a run waits for (its end, a part, a token for another partition): it then
# travels in the same produce request, before it. A 1-step run is one request instead of two or three,
# and its start and end reach readers in one fetch.
AUDIT_HOLD = 0.01


@lru_cache(maxsize=512)
def parse_spec(raw: bytes) -> Spec:
    return parse(orjson.loads(raw))


def encode_event(event: Any) -> bytes:
    """An event's JSON without NUL characters: Postgres keeps neither them in text nor `\u0000` in jsonb,
    and a caller's path, a response's error text or a part's name may hold one."""
    raw = encode(event)
    return raw.replace(b"\\u0000", b"\\ufffd") if b"\\u0000" in raw else raw


def state_label(status: int) -> str:
    return "succeeded" if status < 400 else "failed"


def token_key(run_id: str, token: Token | WireToken, route: str | None) -> str:
    return route or f"{run_id}:{token.token_id}"


class Worker:
    """The state and behaviour of one pipelines process; `create_app` wires it to faust."""

    def __init__(self, config: Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.partitions = config.partitions
        self.actor = f"{ACTOR}:{config.worker_id}"  # which worker wrote an event (the run record shows it)
        self.executor = Executor(HttpTransport(), settings, self.actor)
        self.runs = Runs()
        self.bodies = Bodies(LocalBlobStore(config.blob_dir), settings.inline_limit, self._publish_file)
        self.producer: AIOKafkaProducer | None = None
        self.audit: AIOKafkaProducer | None = None
        self.journal: ChangelogTable | None = None
        self.joins: ChangelogTable | None = None
        self.running: set[str] = set()
        self.in_flight: dict[int, set[asyncio.Task[None]]] = {}  # work partition -> its tokens running
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:
            while self.producer is None or self.audit is None:
                try:
                    # Two connections: what a run waits for (tokens, arrivals, its end, the journal) never
                    # queues behind the audit events (step requests and responses) on the way to the broker.
                    self.producer = self.producer or await self._producer(linger_ms=0)
                    self.audit = self.audit or await self._producer(linger_ms=2)
                except Exception as exc:
                    log.warning("pipelines: Kafka not there yet (%r); retrying", exc)
                    await asyncio.sleep(1)
            if self.journal is None or self.joins is None:
                n, bootstrap = self.partitions, self.config.kafka_bootstrap
                self.journal = ChangelogTable(bootstrap, PIPELINE_JOURNAL, n, self.producer,
                                              lambda key: partition_of(key, n), journals.expires)
                # keyed "<run id>|<point>[|<part>]": a run's joins live in its partition of pipeline-parts
                self.joins = ChangelogTable(bootstrap, PIPELINE_JOINS, n, self.producer,
                                            lambda key: partition_of(key.split(b"|", 1)[0], n), point_due,
                                            lambda key: key.split(b"|", 1)[0])

    async def _producer(self, linger_ms: int) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=self.config.kafka_bootstrap, acks="all", enable_idempotence=True,
                                    linger_ms=linger_ms, max_batch_size=512 * 1024, max_request_size=4 * 1024 * 1024)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def stop(self) -> None:
        for producer in (self.producer, self.audit):
            if producer is not None:
                await producer.stop()
        transport = self.executor.transport
        if isinstance(transport, HttpTransport):
            await transport.close()

    async def send(self, topic: str, key: str, value: bytes, audit: bool = False) -> asyncio.Future[Any]:
        """Produce; returns the future of Kafka's acknowledgement."""
        if self.producer is None or self.audit is None:
            await self.start()
        producer = self.audit if audit else self.producer
        assert producer is not None
        future: asyncio.Future[Any] = await producer.send(topic, value, key=key.encode())
        return future

    async def send_surely(self, topic: str, key: str, value: bytes, owned: Callable[[], bool]) -> asyncio.Future[bool]:
        """Send now; the future is True once Kafka has the record (sent again after each refusal:
        Kafka away for longer than a request's timeout loses nothing), or False once `owned()` says
        the partition went to another worker (whose replay of the unacknowledged arrival sends it again)."""
        first = await self._try_send(topic, key, value)
        return asyncio.ensure_future(until_acknowledged(
            lambda: self._acknowledged(topic, key, value), f"sending {topic} of {key[:80]}", owned, first))

    async def _try_send(self, topic: str, key: str, value: bytes) -> asyncio.Future[Any]:
        try:
            return await self.send(topic, key, value)
        except Exception as exc:  # no metadata in time (Kafka away): as a refused write
            refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            refused.set_exception(exc)
            return refused

    async def _acknowledged(self, topic: str, key: str, value: bytes) -> None:
        await (await self.send(topic, key, value))

    async def _publish_file(self, event: FileStored) -> None:
        await self._acknowledged(FILE_EVENTS, event.stream_id, encode(event))

    def partition_of(self, key: str) -> int:
        return partition_of(key, self.partitions)

    # --- runs ---------------------------------------------------------------------------------------

    def run_of(self, run_id: str, w: WireToken, correlation_id: str | None) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            spec = parse_spec(bytes(w.spec))
            c = w.caller
            caller = Caller(c.method, c.base_path, c.service_path, tuple((k, v) for k, v in c.query), dict(c.headers),
                            {"user_id": c.user_id, "role": c.role}, c.depth)
            run = Run(run_id, w.pipeline, spec, bytes(w.spec), caller, w.deadline, Message(),
                      Flow(spec, caller, self.settings, run_id), correlation_id or run_id, w.route,
                      asyncio.Semaphore(spec.concurrency) if spec.concurrency else None)
            run.wire_caller = c  # type: ignore[attr-defined]
            self.runs.put(run)
        return run

    def base(self, run: Run) -> dict[str, Any]:
        return {"pipeline": run.pipeline, "spec": msgspec.Raw(run.spec_raw), "caller": run.wire_caller,  # type: ignore[attr-defined]
                "deadline": run.deadline, "route": run.route, "label": f"pipeline-run-{run.run_id}"}

    def owner(self, run: Run) -> str:
        user = run.caller.user
        return str(user.get("user_id", "")) if isinstance(user, dict) else ""

    async def wire(self, run: Run, token: Token) -> WireToken:
        return await self.bodies.token_to_wire(token, self.base(run), self.owner(run))

    def meta(self, run: Run, causation: str | None = None) -> dict[str, Any]:
        return {"event_id": new_id(), "stream_id": run.run_id, "sequence": run.next_sequence(),
                "occurred_at": utcnow(), "correlation_id": run.correlation_id, "causation_id": causation,
                "actor": self.actor}

    async def on_token(self, command: ContinueRun, partition: int) -> None:
        w = command.token
        run = self.run_of(command.stream_id, w, command.correlation_id)
        assert self.journal is not None
        journal = Journal(self.journal, token_key(run.run_id, w, run.route), run.deadline + ENDED_KEPT)
        if journal.done:
            return
        sink = KafkaSink(self, run, partition)
        if w.token_id == "r" and not w.pending and w.frames[-1].index == 0:
            c = run.caller
            await sink.emit(PIPELINE_RUNS, RunStarted(
                **{**self.meta(run), "sequence": 1}, pipeline=run.pipeline, user_id=self.owner(run),
                method=c.method, path=c.base_path + (("/" + c.service_path.lstrip("/")) if c.service_path else ""),
                query="&".join(f"{k}={v}" for k, v in c.query), depth=c.depth, deadline=run.deadline))
        try:
            try:
                token = await self.bodies.token_from_wire(w, run.caller.user, run.caller.headers)
            except Exception as exc:  # a body that cannot be read back ends the run, with the reason
                await sink.ended(run, error_message(500, f"the run's message could not be read: {exc}"), None)
            else:
                await self.executor.run_token(run, token, journal, sink)
            await sink.flush()
        except BaseException:
            sink.abandon()  # the attempt is run again (WorkConsumer._run), with its events
            raise
        await journal.finish()

    # --- accounting points ---------------------------------------------------------------------------

    async def on_arrive(self, arrive: Arrive, raw: bytes, joins: Any) -> None:
        run_id = arrive.stream_id
        tally_key = f"{run_id}|{arrive.point}"
        end_key = f"{run_id}|{END}"
        state = _load(joins.get(tally_key.encode()))
        if arrive.outcome == "expired":
            await self._expire(arrive, joins, state)
            return
        if arrive.point != END:
            ended = _load(joins.get(end_key.encode()))
            if ended is not None and ended.get("ended"):
                return  # the run is over (a failure elsewhere): nothing joins any more
        assert arrive.token is not None
        w = arrive.token
        run = self.run_of(run_id, w, arrive.correlation_id)
        if arrive.outcome == "failed" and arrive.point == END:
            if state is None or not state.get("ended"):
                failure = await self.bodies.from_wire(arrive.failure or Body(status=500))
                await self._end(run, failure, joins, end_key)
            return
        point = Point(arrive.kind, arrive.level)
        if state is not None:
            if state.get("ended"):
                return
            point.credit = _fraction(state["credit"])
            point.received = set(state["received"])
            if state.get("last_order") is not None:
                point.last_order = tuple(state["last_order"])
        arrival = Arrival(self._stub(w), arrive.point, arrive.kind, arrive.level, None, arrive.outcome != "notice")
        if arrive.outcome == "message":
            arrival.message = Message()
        answer_so_far = point.last_order
        if not point.add(arrival):
            return
        part_id = w.token_id + ("~" if arrive.outcome == "notice" else "")
        if arrive.point == END:
            if arrive.outcome == "message" and point.last_order != answer_so_far:
                joins[f"{tally_key}|last".encode()] = raw
        else:
            joins[f"{tally_key}|{part_id}".encode()] = raw
        if not point.complete:
            joins.set(tally_key.encode(), orjson.dumps({
                "kind": arrive.kind, "level": arrive.level, "credit": str(point.credit),
                "received": sorted(point.received), "deadline": w.deadline, "owner": self.owner(run),
                "last_order": point.last_order}), due=w.deadline + 1.0)
            return
        if arrive.point == END:
            last_raw = joins.get(f"{tally_key}|last".encode())
            last = None
            if last_raw:
                last_arrive = decode_command_of(last_raw, Arrive)
                assert last_arrive.token is not None
                last = await self.bodies.from_wire(last_arrive.token.message)
            await self._end(run, answer(last, Message()), joins, end_key)
            return
        arrivals = []
        for pid in sorted(point.received):
            part_raw = joins.pop(f"{tally_key}|{pid}".encode(), None)
            if part_raw is None:
                continue
            part = decode_command_of(part_raw, Arrive)
            assert part.token is not None
            token = await self.bodies.token_from_wire(part.token, run.caller.user, run.caller.headers)
            arrivals.append(Arrival(token, part.point, part.kind, part.level,
                                    token.message if part.outcome == "message" else None, part.outcome != "notice"))
        joins.pop(tally_key.encode(), None)
        joined = joined_token(arrivals, arrive.point)
        owned = self._owned(joins, run_id)
        # on the producer the run's end goes by (same partition): ordered without waiting in between
        deliveries = [await self.send_surely(PIPELINE_RUNS, run_id, owned=owned, value=encode_event(RunJoined(
            **self.meta(run), token_id=joined.token_id, point=arrive.point, kind=arrive.kind,
            parts=len(arrivals), messages=sum(1 for a in arrivals if a.message is not None),
            user_id=self.owner(run) or None)))]
        # What a join leads to without a request (transformations, the run's end) is done here: the
        # commonest pipelines end with their joiner, and this saves them a hop through pipeline-work.
        probe = copy.deepcopy(joined)
        outcomes = run.flow.advance(probe)
        if len(outcomes) == 1 and isinstance(outcomes[0], Arrival | Failed) and credit0(outcomes[0].token) == 1 and (
                isinstance(outcomes[0], Failed) or (outcomes[0].point == END and outcomes[0].passes)):
            done = outcomes[0]
            result = done.message if isinstance(done, Failed) else answer(done.message, Message())
            await self._end(run, result, joins, end_key)
            for delivery in deliveries:
                await delivery
            return
        wire = await self.wire(run, joined)
        deliveries.append(await self.send_surely(PIPELINE_WORK, token_key(run_id, joined, run.route), encode(ContinueRun(
            command_id=new_id(), stream_id=run_id, issued_at=utcnow(), actor=self.actor,
            correlation_id=run.correlation_id, token=wire)), owned))
        for delivery in deliveries:
            await delivery

    @staticmethod
    def _stub(w: WireToken) -> Token:
        return Token(w.token_id, list(w.frames), Message(), {}, w.budget, w.tracked, tuple(w.order))

    async def _end(self, run: Run, result: Message, joins: Any, end_key: str) -> None:
        joins.pop_group(run.run_id.encode())  # nothing joins once the run is over (on_arrive): no tally stays due
        joins.set(end_key.encode(), orjson.dumps({"ended": True, "deadline": run.deadline, "kind": END, "level": 0,
                                                  "owner": self.owner(run)}), due=run.deadline + ENDED_KEPT)
        event = await self.ended_event(run.run_id, run.correlation_id, self.owner(run), result, run.next_sequence())
        await (await self.send_surely(PIPELINE_RUNS, run.run_id, encode_event(event), self._owned(joins, run.run_id)))

    async def fail_arrival(self, arrive: Arrive, exc: Exception, joins: Any) -> None:
        """An arrival that failed here for a reason no retry changes (a body that cannot be read back,
        a record too large for Kafka, a fault of skyjobs): its run ends now, with the reason, rather
        than at its deadline with a 504."""
        if arrive.token is None:
            return
        end_key = f"{arrive.stream_id}|{END}"
        ended = _load(joins.get(end_key.encode()))
        if ended is not None and ended.get("ended"):
            return
        run = self.run_of(arrive.stream_id, arrive.token, arrive.correlation_id)
        where = "the run's end" if arrive.point == END else f"the joiner {arrive.point.rsplit('#', 1)[-1]}"
        await self._end(run, error_message(500, f"{where} failed in the pipeline worker: {exc}"[:1000]), joins, end_key)

    @staticmethod
    def _owned(joins: Any, run_id: str) -> Callable[[], bool]:
        key = run_id.encode()
        return lambda: joins.owns(key)

    async def ended_event(self, run_id: str, correlation_id: str, owner: str, result: Message,
                          sequence: int) -> RunEnded:
        output = await self.bodies.to_wire(result, owner, f"pipeline-run-{run_id}")
        error = result.error_message()[:1000] if result.status >= 400 else None
        return RunEnded(event_id=new_id(), stream_id=run_id, sequence=sequence, occurred_at=utcnow(),
                        correlation_id=correlation_id, actor=self.actor, state=state_label(result.status),
                        status=result.status, output=output, error=error, user_id=owner or None)

    async def _expire(self, arrive: Arrive, joins: Any, state: dict[str, Any] | None) -> None:
        run_id = arrive.stream_id
        end_key = f"{run_id}|{END}"
        ended = _load(joins.get(end_key.encode()))
        if ended is None or not ended.get("ended"):
            deadline = (state or {}).get("deadline", time.time())
            text = (f"the pipeline did not finish within {self.settings.run_timeout:g} s" if arrive.point == END else
                    f"the joiner {arrive.point.rsplit('#', 1)[-1]} did not get all its messages before the run's "
                    f"deadline ({self.settings.run_timeout:g} s)")
            owner = str((state or {}).get("owner", ""))
            joins.pop_group(run_id.encode())
            joins.set(end_key.encode(), orjson.dumps({"ended": True, "deadline": deadline, "kind": END, "level": 0}),
                      due=float(deadline) + ENDED_KEPT)
            event = await self.ended_event(run_id, arrive.correlation_id or run_id, owner, error_message(504, text),
                                           1_000_000)
            await (await self.send(PIPELINE_RUNS, run_id, encode_event(event)))
            return
        if time.time() > float(ended.get("deadline", 0)) + ENDED_KEPT:  # long over: forget the run
            joins.pop_group(run_id.encode())

    async def sweep(self, joins: Any) -> None:
        """Send `expired` for the points of this worker's partitions whose run is past its deadline,
        and forget the runs that ended long ago (here: nothing else writes their keys any more)."""
        now = time.time()
        for raw_key in joins.due(now):
            key = raw_key.decode()
            state = _load(joins.get(raw_key)) or {}
            run_id, point = key.split("|", 1)
            if point == END and state.get("ended"):
                if joins.is_ready(raw_key):
                    joins.pop_group(run_id.encode())
                continue
            joins.schedule(raw_key, now + 5)  # sent again if nothing has answered it by then
            await self.send(PIPELINE_PARTS, run_id, encode(Arrive(
                command_id=new_id(), stream_id=run_id, issued_at=utcnow(), actor=self.actor, point=point,
                kind=str(state.get("kind", END)), level=int(state.get("level", 0)), outcome="expired")))
        joins.prune()


class KafkaSink:
    """What one token execution sends; `flush` waits until Kafka has all of it.

    Audit events are held (`AUDIT_HOLD`) and go with the next record a run waits for, or on their own
    connection once the hold is over (a step still waiting for its service).
    """

    def __init__(self, worker: Worker, run: Run, partition: int) -> None:
        self.worker = worker
        self.run = run
        self.partition = partition
        self.pending: list[asyncio.Future[Any]] = []
        self.held: list[tuple[str, bytes]] = []
        self.hold: asyncio.TimerHandle | None = None
        self.released: list[asyncio.Task[None]] = []  # held events sent after their hold

    async def emit(self, topic: str, event: Any) -> None:
        """An event sent without waiting for Kafka (`flush` waits for all of them)."""
        self.held.append((topic, encode_event(event)))
        if self.hold is None:
            self.hold = asyncio.get_running_loop().call_later(AUDIT_HOLD, self._hold_over)

    def _hold_over(self) -> None:
        self.hold = None
        self.released.append(asyncio.ensure_future(self._release(audit=True)))

    async def _release(self, audit: bool) -> None:
        if self.hold is not None:
            self.hold.cancel()
            self.hold = None
        held, self.held = self.held, []
        for topic, value in held:
            self.pending.append(await self.worker.send(topic, self.run.run_id, value, audit=audit))

    async def _send(self, topic: str, key: str, value: bytes) -> None:
        await self._release(audit=False)  # in the same request, before it
        self.pending.append(await self.worker.send(topic, key, value))

    def local(self, run: Run, token: Token) -> bool:
        return self.worker.partition_of(token_key(run.run_id, token, run.route)) == self.partition

    async def forked(self, run: Run, fork: Fork, sent: list[Token]) -> None:
        await self.emit(PIPELINE_RUNS, RunFannedOut(**self.worker.meta(run), token_id=fork.parent.token_id,
                                              element=fork.element, kind=fork.kind,
                                              tokens=[t.token_id for t in fork.tokens],
                                              user_id=self.worker.owner(run) or None))
        for t in sent:
            wire = await self.worker.wire(run, t)
            await self._send(PIPELINE_WORK, token_key(run.run_id, t, run.route), encode(ContinueRun(
                command_id=new_id(), stream_id=run.run_id, issued_at=utcnow(), actor=self.worker.actor,
                correlation_id=run.correlation_id, token=wire)))

    async def arrived(self, run: Run, arrival: Arrival) -> None:
        t = arrival.token
        carried = Token(t.token_id, t.frames, arrival.message or Message(), t.variables, t.budget, t.tracked,
                        t.order, t.pending)
        wire = await self.worker.wire(run, carried)
        outcome = "message" if arrival.message is not None else ("share" if arrival.passes else "notice")
        await self._send(PIPELINE_PARTS, run.run_id, encode(Arrive(
            command_id=new_id(), stream_id=run.run_id, issued_at=utcnow(), actor=self.worker.actor,
            correlation_id=run.correlation_id, point=arrival.point, kind=arrival.kind, level=arrival.level,
            outcome=outcome, token=wire)))

    async def failed(self, run: Run, failed: Failed) -> None:
        t = failed.token
        wire = await self.worker.wire(run, Token(t.token_id, t.frames[:1], Message(), {}, 0, True, t.order))
        failure = await self.worker.bodies.to_wire(failed.message, self.worker.owner(run), f"pipeline-run-{run.run_id}")
        await self._send(PIPELINE_PARTS, run.run_id, encode(Arrive(
            command_id=new_id(), stream_id=run.run_id, issued_at=utcnow(), actor=self.worker.actor,
            correlation_id=run.correlation_id, point=END, kind=END, level=0, outcome="failed", token=wire,
            failure=failure)))

    async def ended(self, run: Run, result: Message, token: Token | None) -> None:
        event = await self.worker.ended_event(run.run_id, run.correlation_id, self.worker.owner(run), result,
                                              run.next_sequence())
        await self._send(PIPELINE_RUNS, run.run_id, encode_event(event))

    async def event(self, run: Run, event: Any) -> None:
        kind, base, fields = event
        fields = {**fields, "user_id": self.worker.owner(run) or None}
        await self.emit(PIPELINE_STEPS, step_event(kind, base, fields, new_id(), run.next_sequence(), utcnow()))

    def abandon(self) -> None:
        if self.hold is not None:
            self.hold.cancel()
        for release in self.released:
            release.cancel()

    async def flush(self) -> None:
        await self._release(audit=False)
        for release in self.released:
            await release
        for delivery in self.pending:
            await delivery


def point_due(key: bytes, raw: bytes) -> float | None:
    """When an accounting point of the joins table falls due: its run's deadline (an ended run's: later)."""
    if key.count(b"|") != 1:
        return None  # a part: it goes with its point
    state = orjson.loads(raw)
    return float(state.get("deadline", 0)) + (ENDED_KEPT if state.get("ended") else 1.0)


def _load(raw: bytes | None) -> dict[str, Any] | None:
    return orjson.loads(raw) if raw else None


def _fraction(text: str) -> Fraction:
    return Fraction(text)


def _raw_topic(app: faust.App, name: str, partitions: int) -> Any:
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                     partitions=partitions)


def create_app(config: Config) -> faust.App:
    settings = from_env(config)
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
        stream_wait_empty=True,  # a rebalance waits for the tokens in flight: their owner changes cleanly
        table_standby_replicas=0,
        topic_disable_leader=True,
        key_serializer="raw",
        value_serializer="raw",
    )
    worker = Worker(config, settings)
    commands = _raw_topic(app, PIPELINE_COMMANDS, config.partitions)
    dead_letters = _raw_topic(app, DEAD_LETTERS, config.partitions)
    kw: dict[str, Any] = {"default": None, "partitions": config.partitions, "key_type": bytes, "value_type": bytes}
    specs = app.Table("pipeline-specs", **kw)

    async def dead_letter(key: Any, raw: bytes, exc: Exception) -> None:
        await dead_letters.send(key=key, value=raw, headers={"skyjobs_reason": str(exc).encode()})

    @app.task
    async def work() -> None:
        await worker.start()
        await WorkConsumer(worker, dead_letter).run()

    @app.task
    async def arrivals() -> None:
        await worker.start()
        await PartsConsumer(worker, dead_letter).run()

    @app.agent(commands)
    async def spec_agent(stream: Any) -> None:
        await worker.start()
        async for event in stream.events():
            try:
                command = decode_command_of(event.value, PipelineCommand)
                if event.key != command.stream_id.encode():
                    raise DecodeError(f"key {event.key!r} differs from stream_id {command.stream_id!r}")
            except DecodeError as exc:
                await dead_letter(event.key, event.value, exc)
                continue
            raw_state = specs.get(event.key)
            state = msgspec.json.decode(raw_state, type=catalog.Entry) if raw_state else None
            decided = catalog.decide(state, command, utcnow())
            for e in decided:
                state = catalog.evolve(state, e)
                await (await worker.send(PIPELINE_EVENTS, command.stream_id, encode(e)))
            if state is not None:
                specs[event.key] = msgspec.json.encode(state)

    @app.timer(interval=1.0)
    async def sweeper() -> None:
        await worker.start()
        assert worker.journal is not None and worker.joins is not None
        await worker.sweep(worker.joins)
        await journals.sweep(worker.journal)

    _ = (work, arrivals, spec_agent, sweeper)
    return app


class WorkConsumer(AckingConsumer):
    """skyjobs.pipeline-work: every token is run on a task of its own and acknowledged when it is done.

    A partition's journal is read before any of its tokens runs; a partition taken away waits (a
    little) for its tokens in flight, so a rebalance hands them over finished rather than half done.
    """

    def __init__(self, worker: Worker, dead_letter: Any) -> None:
        super().__init__(worker.config.kafka_bootstrap, PIPELINE_WORK, WORK_GROUP, self, fetch_max_wait_ms=100)
        self.worker = worker
        self.dead_letter = dead_letter

    async def revoked(self, tps: set[TopicPartition]) -> None:
        running = [t for tp in tps for t in self.worker.in_flight.get(tp.partition, ())]
        if running:
            await asyncio.wait(running, timeout=REVOKE_WAIT)
        await super().revoked(tps)

    async def on_assigned(self, tps: list[Any], ends: dict[Any, int]) -> None:
        assert self.worker.journal is not None
        await self.worker.journal.restore_retrying([tp.partition for tp in tps])

    def on_revoked(self, tps: set[Any]) -> None:
        assert self.worker.journal is not None
        self.worker.journal.forget([tp.partition for tp in tps])
        self.worker.runs.runs.clear()

    async def on_message(self, message: Record) -> None:
        worker = self.worker
        try:
            command = decode_command_of(message.value, ContinueRun)
        except DecodeError as exc:
            await self.dead_letter(None, message.value, exc)
            message.ack()
            return
        key = token_key(command.stream_id, command.token, command.token.route)
        if key in worker.running:  # a copy of a token this worker is running: that one will finish it
            message.ack()
            return
        assert worker.journal is not None
        await worker.journal.wait_ready(message.tp.partition)
        await worker.slots.acquire()
        worker.running.add(key)
        task = asyncio.ensure_future(self._run(command, message, key))
        running = worker.in_flight.setdefault(message.tp.partition, set())
        running.add(task)
        task.add_done_callback(running.discard)

    async def _run(self, command: ContinueRun, message: Record, key: str) -> None:
        """Run the token; one that fails here (Kafka gone for longer than a request's timeout, a full
        disk) is run again, as the next owner would after a crash (the journal keeps its unsafe steps
        from being sent twice), until it succeeds, its run's deadline passes (the sweep then ends the
        run with a 504) or its partition is given away (the next owner runs it)."""
        delay = TOKEN_RETRY_FIRST
        try:
            while True:
                try:
                    await self.worker.on_token(command, message.tp.partition)
                    return
                except Exception:
                    log.exception("pipeline token %s failed in the worker", key)
                if time.time() + delay > command.token.deadline:
                    return
                await asyncio.sleep(delay)
                delay = min(TOKEN_RETRY_LAST, delay * 2)
                if not self.holds(message):
                    return
        finally:
            self.worker.running.discard(key)
            self.worker.slots.release()
            message.ack()



class PartsConsumer(AckingConsumer):
    """skyjobs.pipeline-parts: arrivals at joiners and at runs' ends, in order per partition (per run).

    What the joiners hold is the table `skyjobs.pipeline-joins` (services/pipelines/tables.py), read
    per partition before any arrival of it is handled; an arrival is acknowledged once its changes
    to the table are in Kafka.
    """

    def __init__(self, worker: Worker, dead_letter: Any) -> None:
        super().__init__(worker.config.kafka_bootstrap, PIPELINE_PARTS, PARTS_GROUP, self, fetch_max_wait_ms=100)
        self.worker = worker
        self.dead_letter = dead_letter
        self.background: set[asyncio.Task[None]] = set()

    @property
    def joins(self) -> ChangelogTable:
        assert self.worker.joins is not None
        return self.worker.joins

    async def on_assigned(self, tps: list[Any], ends: dict[Any, int]) -> None:
        await self.joins.restore_retrying([tp.partition for tp in tps])

    def on_revoked(self, tps: set[Any]) -> None:
        self.joins.forget([tp.partition for tp in tps])

    async def on_message(self, message: Record) -> None:
        await self.joins.wait_ready(message.tp.partition)
        try:
            arrive = decode_command_of(message.value, Arrive)
        except DecodeError as exc:
            await self.dead_letter(None, message.value, exc)
            message.ack()
            return
        try:
            await self.worker.on_arrive(arrive, message.value, self.joins)
        except Exception as exc:
            log.exception("pipeline arrival at %s of run %s failed", arrive.point, arrive.stream_id)
            try:
                await self.worker.fail_arrival(arrive, exc, self.joins)
            except Exception:
                log.exception("run %s: its failure could not be recorded; it ends at its deadline", arrive.stream_id)
        writes, self.joins.pending = self.joins.pending, []
        task = asyncio.ensure_future(self._ack_after(writes, message))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _ack_after(self, writes: list[Any], message: Record) -> None:
        written = True
        for write in writes:  # each retried until Kafka has it, or until its partition is given away
            try:
                written = await write and written
            except Exception:  # refused for its size: handling the arrival again would not change it
                log.exception("a joins write of %s@%s can never reach Kafka; its run ends at its deadline",
                              message.tp, message.offset)
        if written:
            message.ack()  # otherwise the next owner of the partition handles the arrival again
