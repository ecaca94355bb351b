"""Upcasters: old versions of an event, read from the log, become the current version.

Events evolve by adding fields with defaults; a change that cannot be made that way gets a new
type (tag) and a pure function here from the old JSON to the new. The log is never rewritten: an
old event is upcast every time it is read (projectors, replay, history, agents).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def _heartbeat_v1(old: dict[str, Any]) -> dict[str, Any]:
    # The executor's heartbeat event was first written as "job.heartbeat.v1", the same type as the
    # command it answers; it became "job.heartbeat-recorded.v1" (past tense, and unambiguous).
    return {**old, "type": "job.heartbeat-recorded.v1"}


def _file_stored_v0(old: dict[str, Any]) -> dict[str, Any]:
    # Before v1 a stored file had "owner" and "bytes" instead of "owner_id" and "size", and no sha256.
    new = {k: v for k, v in old.items() if k not in ("owner", "bytes")}
    return {**new, "type": "file.stored.v1", "owner_id": old["owner"], "size": old["bytes"],
            "sha256": old.get("sha256", ""), "content_type": old.get("content_type", "application/octet-stream")}


EVENT_UPCASTERS: dict[str, Upcaster] = {
    "job.heartbeat.v1": _heartbeat_v1,
    "file.stored.v0": _file_stored_v0,
}


def upcast(message: dict[str, Any]) -> dict[str, Any]:
    """Apply upcasters until the message has a current type (each maps one old type to a newer one)."""
    for _ in range(10):
        step = EVENT_UPCASTERS.get(str(message.get("type")))
        if step is None:
            return message
        message = step(message)
    raise ValueError(f"upcasting {message.get('type')!r} does not end")
