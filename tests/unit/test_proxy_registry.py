"""The registry fold: given events, when a command, then events (no Kafka, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from events.base import new_id
from events.services import (
    Argument,
    Description,
    InstanceDescribed,
    InstanceDown,
    InstanceRegistered,
    InstanceRemoved,
    InstanceUp,
    RegisterInstance,
    RemoveInstance,
    ReportProbe,
    ServiceCommand,
    ServiceCreated,
    ServiceEvent,
)
from services.proxy.registry import DOWN, UP, Registry, decide, evolve

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
ECHO = Description(name="echo", description="echoes", arguments=[Argument(argument_name="value", type="json")])
IMAGES = Description(name="image_transform_service", arguments=[Argument(argument_name="image", type="image")])


def meta() -> dict[str, object]:
    return {"command_id": new_id(), "stream_id": "service-registry", "issued_at": NOW, "actor": "admin"}


def register(url: str, description: Description = ECHO) -> RegisterInstance:
    return RegisterInstance(**meta(), instance_id=new_id(), url=url, description=description)  # type: ignore[arg-type]


def run(registry: Registry, command: ServiceCommand, at: datetime = NOW) -> list[ServiceEvent]:
    events = decide(registry, command, at)
    for event in events:
        evolve(registry, event)
    return events


def test_first_instance_of_a_name_creates_the_service_with_id_zero() -> None:
    registry = Registry()
    command = register("http://127.0.0.1:8101")
    events = run(registry, command)
    assert [type(e) for e in events] == [InstanceRegistered, ServiceCreated, InstanceDescribed]
    assert [e.sequence for e in events] == [1, 2, 3]
    created = events[1]
    assert isinstance(created, ServiceCreated) and created.service_id == 0 and created.name == "echo"
    assert all(e.causation_id == command.command_id and e.stream_id == "service-registry" for e in events)
    instance = registry.instances[command.instance_id]
    assert instance.state == UP and instance.service_id == 0 and instance.description == ECHO
    assert registry.services[0].arguments == ECHO.arguments


def test_ids_are_dense_in_order_of_names_and_instances_of_a_name_share_one() -> None:
    registry = Registry()
    run(registry, register("http://a:1"))
    run(registry, register("http://b:1", IMAGES))
    events = run(registry, register("http://c:1"))
    assert [type(e) for e in events] == [InstanceRegistered, InstanceDescribed]
    assert {s.service_id: s.name for s in registry.services.values()} == {0: "echo", 1: "image_transform_service"}
    assert len(registry.instances_of(0)) == 2 and len(registry.instances_of(1)) == 1


def test_a_url_registered_twice_and_a_redelivered_command_decide_nothing() -> None:
    registry = Registry()
    command = register("http://a:1")
    run(registry, command)
    assert decide(registry, command, NOW) == []
    assert decide(registry, register("http://a:1"), NOW) == []


def test_probes_mark_down_then_up_only_on_change() -> None:
    registry = Registry()
    command = register("http://a:1")
    run(registry, command)
    instance_id = command.instance_id
    ok = ReportProbe(**meta(), instance_id=instance_id, ok=True, description=ECHO)  # type: ignore[arg-type]
    failed = ReportProbe(**meta(), instance_id=instance_id, ok=False, error="refused")  # type: ignore[arg-type]
    assert decide(registry, ok, NOW) == []
    down = run(registry, failed, NOW + timedelta(seconds=1))
    assert [type(e) for e in down] == [InstanceDown] and isinstance(down[0], InstanceDown) and down[0].reason == "refused"
    assert registry.instances[instance_id].state == DOWN and registry.healthy(0) == []
    assert decide(registry, failed, NOW) == []
    assert [type(e) for e in run(registry, ok)] == [InstanceUp]
    assert registry.instances[instance_id].state == UP and registry.instances[instance_id].reason is None


def test_a_changed_me_describes_again_and_may_move_the_instance_to_a_new_service() -> None:
    registry = Registry()
    command = register("http://a:1")
    run(registry, command)
    renamed = Description(name="echo2", description="new")
    probe = ReportProbe(**meta(), instance_id=command.instance_id, ok=True, description=renamed)  # type: ignore[arg-type]
    events = run(registry, probe)
    assert [type(e) for e in events] == [ServiceCreated, InstanceDescribed]
    assert registry.instances[command.instance_id].service_id == 1
    assert registry.instances_of(0) == [] and registry.services[1].description == "new"


def test_remove_then_the_url_may_be_registered_again() -> None:
    registry = Registry()
    command = register("http://a:1")
    run(registry, command)
    remove = RemoveInstance(**meta(), instance_id=command.instance_id)  # type: ignore[arg-type]
    assert [type(e) for e in run(registry, remove)] == [InstanceRemoved]
    assert registry.instances == {} and decide(registry, remove, NOW) == []
    again = run(registry, register("http://a:1"))
    assert [type(e) for e in again] == [InstanceRegistered, InstanceDescribed]  # the service (id 0) exists
    assert isinstance(again[1], InstanceDescribed) and again[1].service_id == 0


def test_evolve_skips_events_already_applied() -> None:
    registry = Registry()
    events = run(registry, register("http://a:1"))
    before = registry.version
    for event in events:
        evolve(registry, event)
    assert registry.version == before and len(registry.instances) == 1
