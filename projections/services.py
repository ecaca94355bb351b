"""The `services` projection: worker services and their instances (the registry's read model).

Few events (registrations, health changes), so one statement per event. Every row carries the
registry sequence that last changed it; an event at or below it changes nothing (redelivery).
"""

from __future__ import annotations

import asyncpg
import msgspec

from events.services import (
    InstanceDescribed,
    InstanceDown,
    InstanceRegistered,
    InstanceRemoved,
    InstanceUp,
    ServiceCreated,
    ServiceEvent,
)
from events.topics import SERVICE_EVENTS

NAME = "services"
TOPIC = SERVICE_EVENTS


async def write(conn: asyncpg.Connection, events: list[ServiceEvent]) -> None:
    for e in events:
        seq = e.sequence
        match e:
            case ServiceCreated():
                await conn.execute(
                    "INSERT INTO services (service_id, name, created_at, version) VALUES ($1, $2, $3, $4) "
                    "ON CONFLICT DO NOTHING",
                    e.service_id, e.name, e.occurred_at, seq,
                )
            case InstanceRegistered():
                await conn.execute(
                    "INSERT INTO service_instances (instance_id, url, state, registered_at, changed_at, version) "
                    "VALUES ($1, $2, 'up', $3, $3, $4) ON CONFLICT DO NOTHING",
                    e.instance_id, e.url, e.occurred_at, seq,
                )
            case InstanceDescribed():
                d = e.description
                arguments = msgspec.to_builtins(d.arguments)
                await conn.execute(
                    "UPDATE service_instances SET service_id = $2, name = $3, description = $4, arguments = $5, "
                    "task_path = $6, max_concurrency = $7, changed_at = $8, version = $9 "
                    "WHERE instance_id = $1 AND version < $9",
                    e.instance_id, e.service_id, d.name, d.description, arguments, d.task_path, d.max_concurrency,
                    e.occurred_at, seq,
                )
                await conn.execute(
                    "UPDATE services SET description = $2, arguments = $3, version = $4 "
                    "WHERE service_id = $1 AND version < $4",
                    e.service_id, d.description, arguments, seq,
                )
            case InstanceDown():
                await conn.execute(
                    "UPDATE service_instances SET state = 'down', reason = $2, changed_at = $3, version = $4 "
                    "WHERE instance_id = $1 AND version < $4 AND removed_at IS NULL",
                    e.instance_id, e.reason, e.occurred_at, seq,
                )
            case InstanceUp():
                await conn.execute(
                    "UPDATE service_instances SET state = 'up', reason = NULL, changed_at = $2, version = $3 "
                    "WHERE instance_id = $1 AND version < $3 AND removed_at IS NULL",
                    e.instance_id, e.occurred_at, seq,
                )
            case InstanceRemoved():
                await conn.execute(
                    "UPDATE service_instances SET state = 'removed', removed_at = $2, changed_at = $2, version = $3 "
                    "WHERE instance_id = $1 AND version < $3",
                    e.instance_id, e.occurred_at, seq,
                )
