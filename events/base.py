"""Fields every event and command carries, and the id and clock helpers they use."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import uuid_utils


def new_id() -> str:
    """A time-ordered UUID (v7) as text: ids sort by creation time."""
    return str(uuid_utils.uuid7())


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=False):
    """Common part of an event. `stream_id` is also the Kafka key; `sequence` counts from 1 per stream."""

    event_id: str
    stream_id: str
    sequence: int
    occurred_at: datetime
    correlation_id: str
    causation_id: str | None = None
    actor: str | None = None


class Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=False):
    """Common part of a command: an intention addressed to one stream (the Kafka key)."""

    command_id: str
    stream_id: str
    issued_at: datetime
    actor: str | None = None
    correlation_id: str | None = None
