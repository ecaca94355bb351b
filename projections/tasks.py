"""The `tasks` projection: one row per add_task, the fold of its events (the router's own fold).

A task's row is inserted when it is submitted and updated by its attempts and its end, often in
the same batch. Rows that ended never change again: a task run twice (a router died mid-task) keeps
its first end.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import asyncpg

from events.tasks import TaskEvent, TaskSubmitted
from events.topics import TASK_EVENTS
from services.proxy.tasks import PENDING, Task, apply

NAME = "tasks"
TOPIC = TASK_EVENTS

COLUMNS = (
    "task_id service_id user_id state attempts instance_id answer answer_file_id error failure submitted_at "
    "finished_at deadline version correlation_id"
).split()

_TYPES = {
    "task_id": "uuid", "service_id": "int", "user_id": "text", "state": "text", "attempts": "int",
    "instance_id": "uuid", "answer": "text", "answer_file_id": "uuid", "error": "text", "failure": "text",
    "submitted_at": "timestamptz", "finished_at": "timestamptz", "deadline": "timestamptz", "version": "int",
    "correlation_id": "text",
}
# One statement per batch over arrays: on these machines ~1.7x the rows/s of executemany (226k against 136k).
_INSERT = f"""
INSERT INTO tasks ({", ".join(COLUMNS)})
SELECT * FROM unnest({", ".join(f"${i + 1}::{_TYPES[c]}[]" for i, c in enumerate(COLUMNS))})
ON CONFLICT (task_id) DO NOTHING
"""
# What attempts and endings change; a row that ended already is never touched again.
_CHANGED = "task_id state attempts instance_id answer answer_file_id error failure finished_at version".split()
_UPDATE = f"""
UPDATE tasks t SET {", ".join(
    f"{c} = COALESCE(u.{c}, t.{c})" if c == "instance_id" else f"{c} = u.{c}" for c in _CHANGED[1:])}
FROM unnest({", ".join(f"${i + 1}::{_TYPES[c]}[]" for i, c in enumerate(_CHANGED))}) AS u({", ".join(_CHANGED)})
WHERE t.task_id = u.task_id AND t.version < u.version AND t.state = '{PENDING}'
"""


def to_record(task: Task) -> tuple[Any, ...]:
    values = {
        "task_id": task.task_id, "service_id": task.service_id, "user_id": task.user_id, "state": task.state,
        "attempts": task.attempts, "instance_id": task.instance_id or None,
        "answer": task.answer.decode() if task.answer is not None else None,
        "answer_file_id": task.answer_file_id, "error": task.error, "failure": task.failure,
        "submitted_at": task.submitted_at, "finished_at": task.finished_at, "deadline": task.deadline,
        "version": task.version, "correlation_id": task.correlation_id,
    }
    return tuple(values[c] for c in COLUMNS)


def from_record(record: asyncpg.Record) -> Task:
    values = dict(record)
    for key in ("task_id", "instance_id", "answer_file_id"):
        values[key] = str(values[key]) if values[key] else None
    values["answer"] = values["answer"].encode() if values["answer"] is not None else None
    return Task(**values)


def _columns(records: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(column) for column in zip(*records, strict=True)] if records else [[] for _ in range(width)]


async def write(conn: asyncpg.Connection, events: list[TaskEvent]) -> None:
    by_task: dict[str, list[TaskEvent]] = defaultdict(list)
    for event in events:
        by_task[event.stream_id].append(event)
    new, changed = [], []
    for task_id, stream in by_task.items():
        first = stream[0]
        if isinstance(first, TaskSubmitted):
            row = None
            for event in stream:
                row = apply(row, event)
            if row is not None:
                new.append(to_record(row))
            continue
        # A task submitted in an earlier batch: fold its new events onto a stand-in and write only
        # the columns they change (each of these events carries its absolute attempt number).
        row = Task(task_id=task_id, service_id=0, user_id="", submitted_at=first.occurred_at,
                   deadline=first.occurred_at, version=first.sequence - 1)
        for event in stream:
            row = apply(row, event)
        assert row is not None
        values = dict(zip(COLUMNS, to_record(row), strict=True))
        changed.append(tuple(values[c] for c in _CHANGED))
    if new:
        await conn.execute(_INSERT, *_columns(new, len(COLUMNS)))
    if changed:
        await conn.execute(_UPDATE, *_columns(changed, len(_CHANGED)))
