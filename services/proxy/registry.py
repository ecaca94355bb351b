"""The service registry as a fold: `evolve(registry, event)` and `decide(registry, command, now)`.

No I/O and no clock of its own. Commands that change nothing decide no events (a URL registered
twice, a probe that confirms what is known), which makes redelivered commands and the health
checker's repeated reports harmless.

    register ──> [service.created] instance-registered, instance-described   (the instance is up)
    probe ok ──> [instance-described if /me changed] [instance-up if it was down]
    probe failed ──> instance-down (if it was up)          remove ──> instance-removed
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from events.base import new_id
from events.services import (
    REGISTRY_STREAM,
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

UP = "up"
DOWN = "down"


class Instance(msgspec.Struct, kw_only=True):
    """One registered instance (an URL); removed instances leave the registry."""

    instance_id: str
    url: str
    state: str = UP
    service_id: int = -1
    description: Description | None = None
    reason: str | None = None
    registered_at: datetime
    changed_at: datetime


class Service(msgspec.Struct, kw_only=True):
    """A name and what its most recently described instance says about it."""

    service_id: int
    name: str
    description: str = ""
    arguments: list[Argument] = []


class Registry(msgspec.Struct, kw_only=True):
    instances: dict[str, Instance] = {}
    services: dict[int, Service] = {}
    version: int = 0

    def by_url(self, url: str) -> Instance | None:
        return next((i for i in self.instances.values() if i.url == url), None)

    def named(self, name: str) -> Service | None:
        return next((s for s in self.services.values() if s.name == name), None)

    def instances_of(self, service_id: int) -> list[Instance]:
        return [i for i in self.instances.values() if i.service_id == service_id]

    def healthy(self, service_id: int) -> list[Instance]:
        return [i for i in self.instances.values() if i.service_id == service_id and i.state == UP]


def evolve(registry: Registry, event: ServiceEvent) -> Registry:
    """Apply one event, in place (the registry is folded by one owner); events already applied are skipped."""
    if event.sequence <= registry.version:
        return registry
    registry.version = event.sequence
    instance = registry.instances.get(getattr(event, "instance_id", ""))
    match event:
        case ServiceCreated():
            registry.services[event.service_id] = Service(service_id=event.service_id, name=event.name)
        case InstanceRegistered():
            registry.instances[event.instance_id] = Instance(
                instance_id=event.instance_id, url=event.url, registered_at=event.occurred_at,
                changed_at=event.occurred_at,
            )
        case InstanceDescribed() if instance is not None:
            instance.service_id, instance.description = event.service_id, event.description
            instance.changed_at = event.occurred_at
            service = registry.services.get(event.service_id)
            if service is not None:  # the latest description of any of its instances is the service's
                service.description = event.description.description
                service.arguments = list(event.description.arguments)
        case InstanceDown() if instance is not None:
            instance.state, instance.reason, instance.changed_at = DOWN, event.reason, event.occurred_at
        case InstanceUp() if instance is not None:
            instance.state, instance.reason, instance.changed_at = UP, None, event.occurred_at
        case InstanceRemoved():
            registry.instances.pop(event.instance_id, None)
    return registry


def decide(registry: Registry, command: ServiceCommand, now: datetime) -> list[ServiceEvent]:
    """The events a command causes in the current registry (often none)."""
    events: list[ServiceEvent] = []

    def meta() -> dict[str, Any]:
        return {
            "event_id": new_id(),
            "stream_id": REGISTRY_STREAM,
            "sequence": registry.version + len(events) + 1,
            "occurred_at": now,
            "correlation_id": command.correlation_id or command.command_id,
            "causation_id": command.command_id,
            "actor": command.actor,
        }

    def describe(instance_id: str, description: Description) -> None:
        service = registry.named(description.name)
        if service is None:
            service_id = len(registry.services)  # dense, in order of first appearance of a name
            events.append(ServiceCreated(**meta(), service_id=service_id, name=description.name))
        else:
            service_id = service.service_id
        events.append(InstanceDescribed(**meta(), instance_id=instance_id, service_id=service_id,
                                        description=description))

    instance = registry.instances.get(command.instance_id)
    match command:
        case RegisterInstance():
            if instance is None and registry.by_url(command.url) is None:
                events.append(InstanceRegistered(**meta(), instance_id=command.instance_id, url=command.url))
                describe(command.instance_id, command.description)
        case ReportProbe() if instance is not None and command.ok:
            if command.description is not None and command.description != instance.description:
                describe(instance.instance_id, command.description)
            if instance.state == DOWN:
                events.append(InstanceUp(**meta(), instance_id=instance.instance_id))
        case ReportProbe() if instance is not None and instance.state == UP:
            events.append(InstanceDown(**meta(), instance_id=instance.instance_id,
                                       reason=command.error or "did not answer /me"))
        case RemoveInstance() if instance is not None:
            events.append(InstanceRemoved(**meta(), instance_id=instance.instance_id))
    return events
