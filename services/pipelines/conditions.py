"""Conditions of both spellings, tested against a message (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.pipelines import expressions
from services.pipelines.expressions import UNDEFINED, Budget, JsFunction
from services.pipelines.messages import ERROR_MESSAGE, ERROR_STATUS, Message
from services.pipelines.spec import Condition


@dataclass
class ConditionContext:
    """What a Restspace condition may name besides the message."""

    method: str = "GET"
    subpath: list[str] = field(default_factory=list)
    is_directory: bool = False
    user: Any = None
    variables: dict[str, Any] = field(default_factory=dict)


def _error_of(message: Message) -> tuple[int, str] | None:
    if message.failed:
        return message.status, message.error_message()
    if message.is_json and not message.null:
        value = message.json()
        if isinstance(value, dict) and isinstance(value.get(ERROR_STATUS), int):
            return int(value[ERROR_STATUS]), str(value.get(ERROR_MESSAGE, ""))
    return None


def _mime_matches(message: Message, mime: str) -> bool:
    if mime == "json":
        return message.is_json
    if mime == "text":
        return message.is_text
    if mime == "binary":
        return message.is_binary
    return message.content_type == mime


def passes(condition: Condition | None, message: Message, ctx: ConditionContext, budget: Budget | None = None) -> bool:
    """Whether `message` passes `condition` (no condition passes)."""
    if condition is None:
        return True
    if condition.kind == "mime":
        return not message.null and _mime_matches(message, condition.mime)
    if condition.kind == "name":
        return message.name == condition.name
    if condition.kind == "error":
        error = _error_of(message)
        if error is None:
            return False
        status, text = error
        if condition.ranges and not any(lo <= status <= hi for lo, hi in condition.ranges):
            return False
        return condition.text.lower() in text.lower()
    return expressions.truthy(expressions.evaluate(condition.expr, scope(message, ctx), budget or Budget()))


def scope(message: Message, ctx: ConditionContext) -> dict[str, Any]:
    error = _error_of(message)
    status = error[0] if error else message.status
    return {
        **ctx.variables,
        "name": message.name,
        "mime": message.content_type,
        "isJson": message.is_json,
        "isText": message.is_text,
        "isBinary": message.is_binary,
        "status": status,
        "ok": error is None and message.ok,
        "method": ctx.method,
        "subpath": list(ctx.subpath),
        "isDirectory": ctx.is_directory,
        "user": ctx.user if ctx.user is not None else UNDEFINED,
        "header": JsFunction("header", lambda h: message.headers.get(str(h).lower(), UNDEFINED)),
        "body": JsFunction("body", lambda: message.json()),
    }
