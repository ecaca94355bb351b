"""The router's task handling with Kafka and the instances replaced by fakes: replay gate, retries."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import msgspec
import orjson
from aiokafka import TopicPartition

from events.base import new_id, utcnow
from events.codec import decode_event, encode
from events.services import Argument, Description
from events.tasks import INTERNAL, TaskAnswered, TaskAttemptFailed, TaskFailed, TaskSubmitted
from events.topics import TASK_EVENTS
from services.config import Config, ProxySettings
from services.consumer import Message, _Acks
from services.proxy.instances import InstanceUnreachable
from services.proxy.registry import Instance, Service
from services.proxy.router import MAX_IN_FLIGHT, Router
from tests.conftest import eventually

TP = TopicPartition(TASK_EVENTS, 0)
ECHO = Description(name="echo", arguments=[Argument(argument_name="value", type="json")])


class FakeInstances:
    def __init__(self, failing: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.failing = failing
        self.calls: list[tuple[str, str]] = []

    async def run(self, url: str, task_path: str, body: bytes, timeout: float, task_id: str) -> tuple[int, bytes]:
        self.calls.append((url, task_id))
        if url in self.failing:
            raise InstanceUnreachable(f"POST {url}{task_path} failed: refused")
        return 200, orjson.dumps({"echo": orjson.loads(body)["args"], "by": url})

    async def describe(self, url: str, timeout: float) -> Description:
        if url in self.failing:
            raise InstanceUnreachable("down")
        return ECHO

    async def close(self) -> None:
        pass


def make_router(*urls: str, failing: set[str] = frozenset()) -> tuple[Router, FakeInstances, list[Any]]:  # type: ignore[assignment]
    router = Router(Config(proxy=ProxySettings(backoff=0.001, no_instance_wait=0.5)), owns_registry=lambda: True)
    now = utcnow()
    router.view.registry.services[0] = Service(service_id=0, name="echo", arguments=ECHO.arguments)
    for url in urls:
        router.view.registry.instances[url] = Instance(instance_id=url, url=url, service_id=0, description=ECHO,
                                                       registered_at=now, changed_at=now)
    fake = FakeInstances(failing)
    router.client = fake  # type: ignore[assignment]
    sent: list[Any] = []

    async def send(topic: str, key: str, value: bytes) -> Any:
        sent.append(decode_event(value) if topic == TASK_EVENTS else value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    router.send = send  # type: ignore[method-assign]
    return router, fake, sent


def submitted(value: Any) -> TaskSubmitted:
    task_id = new_id()
    return TaskSubmitted(event_id=new_id(), stream_id=task_id, sequence=1, occurred_at=utcnow(),
                         correlation_id=task_id, service_id=0, service_name="echo", user_id="alice", args=[value],
                         types=["json"], deadline=utcnow() + timedelta(minutes=5))


async def test_a_replayed_task_answered_meanwhile_is_not_run_again() -> None:
    router, fake, sent = make_router("http://a")
    acks = _Acks()
    first, second = submitted(1), submitted(2)
    answered = TaskAnswered(event_id=new_id(), stream_id=first.stream_id, sequence=2, occurred_at=utcnow(),
                            correlation_id="c", instance_id="http://a", attempt=1, answer=msgspec.Raw(b"1"))
    log = [encode(first), encode(second), encode(answered)]
    await router.on_assigned([TP], {TP: len(log)})
    for offset, raw in enumerate(log):
        acks.received.append(offset)
        await router.on_message(Message(TP, offset, raw, acks))

    async def second_done() -> bool:
        return acks.committable() == 3

    await eventually(second_done, timeout=5, what="the replayed task to end")
    assert [task_id for _, task_id in fake.calls] == [second.stream_id]  # the first one was answered already
    assert [type(e) for e in sent] == [TaskAnswered] and sent[0].stream_id == second.stream_id


async def test_an_unreachable_instance_is_suspected_and_the_task_retried_on_the_other() -> None:
    router, fake, sent = make_router("http://a", "http://b", failing={"http://a"})
    acks = _Acks()
    tasks = [submitted(i) for i in range(4)]
    await router.on_assigned([TP], {TP: 0})
    for offset, task in enumerate(tasks):
        acks.received.append(offset)
        await router.on_message(Message(TP, offset, encode(task), acks))

    async def all_done() -> bool:
        return acks.committable() == 4

    await eventually(all_done, timeout=5, what="every task to end")
    answers = [e for e in sent if isinstance(e, TaskAnswered)]
    assert sorted(a.stream_id for a in answers) == sorted(t.stream_id for t in tasks)
    assert {a.instance_id for a in answers} == {"http://b"}
    failed = [e for e in sent if isinstance(e, TaskAttemptFailed)]
    assert len(failed) >= 1 and all(e.instance_id == "http://a" and e.attempt == 1 for e in failed)
    assert all(a.attempt == 2 for a in answers if a.stream_id in {f.stream_id for f in failed})
    assert "http://a" in router.balancer.suspects  # its /me fails too: no tasks until it answers again


class BrokenInstances(FakeInstances):
    """A client with a fault of its own (not an unreachable instance): what the router did not foresee."""

    async def run(self, url: str, task_path: str, body: bytes, timeout: float, task_id: str) -> tuple[int, bytes]:
        self.calls.append((url, task_id))
        raise RuntimeError("a bug in the client")


async def test_a_fault_of_the_router_fails_the_task_with_its_reason_and_lets_the_partition_move_on() -> None:
    router, _, sent = make_router("http://a")
    router.client = broken = BrokenInstances()  # type: ignore[assignment]
    acks = _Acks()
    await router.on_assigned([TP], {TP: 0})
    acks.received.append(0)
    task = submitted(1)
    await router.on_message(Message(TP, 0, encode(task), acks))

    async def acknowledged() -> bool:
        return acks.committable() == 1

    await eventually(acknowledged, timeout=5, what="the task's message to be acknowledged")
    assert [task_id for _, task_id in broken.calls] == [task.stream_id]
    assert [(type(e), e.reason) for e in sent] == [(TaskFailed, INTERNAL)]
    assert "a bug in the client" in sent[0].error and sent[0].sequence == 2
    assert router.slots._value == MAX_IN_FLIGHT  # its slot is free again
