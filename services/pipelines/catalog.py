"""Stored pipelines (the spec stream of each name): pure decisions.

    events = decide(state, command, now)        # PipelineSaved | PipelineDeleted | PipelineChangeRefused
    state = evolve(state, event)

A pipeline belongs to the user who created it: only they (or an admin) replace or delete it. The
spec agent (services/pipelines/agents.py) is the single writer of each name's stream, so two saves
of a new name race to one creation and one replacement, never two owners.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from events.base import new_id
from events.pipelines import (
    DeletePipeline,
    PipelineChangeRefused,
    PipelineCommand,
    PipelineDeleted,
    PipelineSaved,
    SavePipeline,
    SpecEvent,
)


class Entry(msgspec.Struct, frozen=True):
    """What the agent keeps of a name: its owner, whether it exists, how many events the stream has."""

    user_id: str = ""
    exists: bool = False
    sequence: int = 0


def decide(state: Entry | None, command: PipelineCommand, now: datetime) -> list[SpecEvent]:
    state = state or Entry()
    meta: dict[str, Any] = {"event_id": new_id(), "stream_id": command.stream_id, "sequence": state.sequence + 1, "occurred_at": now,
            "correlation_id": command.correlation_id or command.command_id, "causation_id": command.command_id,
            "actor": command.user_id}
    owner_ok = not state.exists or state.user_id == command.user_id or command.admin
    if isinstance(command, SavePipeline):
        if not owner_ok:
            return [PipelineChangeRefused(**meta, name=command.name, user_id=command.user_id, reason="forbidden")]
        return [PipelineSaved(**meta, name=command.name, spec=command.spec,
                              user_id=state.user_id if state.exists else command.user_id, created=not state.exists)]
    assert isinstance(command, DeletePipeline)
    if not state.exists:
        return [PipelineChangeRefused(**meta, name=command.name, user_id=command.user_id, reason="missing")]
    if not owner_ok:
        return [PipelineChangeRefused(**meta, name=command.name, user_id=command.user_id, reason="forbidden")]
    return [PipelineDeleted(**meta, name=command.name, user_id=state.user_id)]


def evolve(state: Entry | None, event: SpecEvent) -> Entry:
    state = state or Entry()
    if isinstance(event, PipelineSaved):
        return Entry(event.user_id, True, event.sequence)
    if isinstance(event, PipelineDeleted):
        return Entry("", False, event.sequence)
    return msgspec.structs.replace(state, sequence=event.sequence)
