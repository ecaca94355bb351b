"""The service registry stream (seed 004): commands on `skyjobs.service-commands`, events on `skyjobs.service-events`.

The whole registry is one stream (`REGISTRY_STREAM`, also the Kafka key), so one agent decides every
change in order. That is what keeps its two invariants without a database: service ids are a dense
0, 1, 2, ... in order of first appearance of a name, and a URL names at most one live instance.

Commands come from the API (register, remove) and from the router's health checks (report-probe).
"""

from __future__ import annotations

import msgspec

from events.base import Command, Event

REGISTRY_STREAM = "service-registry"

# The argument types an instance may declare in its /me (seed 004 shows "image" and "int").
ARGUMENT_TYPES = ("int", "float", "str", "bool", "json", "image", "file")


class Argument(msgspec.Struct, frozen=True, kw_only=True):
    """One input argument of a service, as its /me declares it."""

    argument_name: str
    argument_description: str = ""
    type: str


class Description(msgspec.Struct, frozen=True, kw_only=True):
    """What an instance's GET /me says about itself (the seed's fields plus two optional ones)."""

    name: str
    description: str = ""
    arguments: list[Argument] = []
    task_path: str = "/run"  # where the proxy POSTs {"task_id", "args"}
    max_concurrency: int | None = None  # at most this many tasks at once on this instance


# --- commands -----------------------------------------------------------------------------------


class RegisterInstance(Command, frozen=True, tag="service.register-instance.v1"):
    """An admin registers an instance by URL; the API has read its /me already."""

    instance_id: str
    url: str
    description: Description


class ReportProbe(Command, frozen=True, tag="service.report-probe.v1"):
    """The result of calling an instance's /me (health check): its description, or the error."""

    instance_id: str
    ok: bool
    description: Description | None = None
    error: str | None = None


class RemoveInstance(Command, frozen=True, tag="service.remove-instance.v1"):
    instance_id: str


ServiceCommand = RegisterInstance | ReportProbe | RemoveInstance


# --- events -------------------------------------------------------------------------------------


class ServiceCreated(Event, frozen=True, tag="service.created.v1"):
    """The first instance of a new name: the name gets the next service id."""

    service_id: int
    name: str


class InstanceRegistered(Event, frozen=True, tag="service.instance-registered.v1"):
    instance_id: str
    url: str


class InstanceDescribed(Event, frozen=True, tag="service.instance-described.v1"):
    """The instance's /me (at registration, or changed since): it serves `service_id`."""

    instance_id: str
    service_id: int
    description: Description


class InstanceDown(Event, frozen=True, tag="service.instance-down.v1"):
    """The instance stopped answering its /me: it gets no tasks until it answers again."""

    instance_id: str
    reason: str


class InstanceUp(Event, frozen=True, tag="service.instance-up.v1"):
    instance_id: str


class InstanceRemoved(Event, frozen=True, tag="service.instance-removed.v1"):
    instance_id: str


ServiceEvent = ServiceCreated | InstanceRegistered | InstanceDescribed | InstanceDown | InstanceUp | InstanceRemoved
