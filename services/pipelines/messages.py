"""The message that flows down a pipeline: an HTTP message with a name (pure data, no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

ERROR_STATUS = "_errorStatus"
ERROR_MESSAGE = "_errorMessage"
_DISPOSITION_NAME = re.compile(r'name="?([^";]*)"?')
# Headers that describe one hop only: never copied from a response into the next request.
HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "host", "date",
                         "server", "content-encoding", "upgrade", "te", "trailer", "proxy-authorization",
                         "proxy-authenticate"})


@dataclass
class Message:
    """Status, headers (lower-case names), body bytes and a name. `null` marks the empty message that an
    empty fan-out produces: steps and transforms pass it on, joiners turn it into `{}`."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    name: str = ""
    null: bool = False
    method: str = "POST"  # of the request that produced it (the caller's for the first message)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def is_json(self) -> bool:
        ct = self.content_type
        return ct == "application/json" or ct.endswith("+json") or ct.endswith("/json")

    @property
    def is_text(self) -> bool:
        ct = self.content_type
        return ct.startswith("text/") or self.is_json or ct in ("application/xml", "application/javascript")

    @property
    def is_binary(self) -> bool:
        return not self.body or not self.is_text

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def failed(self) -> bool:
        return self.status >= 300

    def json(self) -> Any:
        """The body as JSON: parsed JSON, text as a string, nothing as None."""
        if self.null or not self.body:
            return None
        if self.is_json or not self.content_type:
            try:
                return orjson.loads(self.body)
            except orjson.JSONDecodeError:
                pass
        try:
            return self.body.decode()
        except UnicodeDecodeError:
            return None

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def copy(self, **changes: Any) -> Message:
        changes.setdefault("headers", dict(self.headers))
        return replace(self, **changes)

    def with_json(self, value: Any, status: int | None = None) -> Message:
        headers = {k: v for k, v in self.headers.items() if k not in ("content-type", "content-length", "etag")}
        headers["content-type"] = "application/json"
        return replace(self, headers=headers, body=orjson.dumps(value), null=False,
                       status=self.status if status is None else status)

    def renamed(self, name: str) -> Message:
        return replace(self, name=name, headers=dict(self.headers))

    def error_message(self) -> str:
        """The text of a failure: `error`/`message` of a JSON body, else the body text."""
        value = self.json()
        if isinstance(value, dict):
            for key in ("error", "message", ERROR_MESSAGE):
                if isinstance(value.get(key), str):
                    return str(value[key])
        return value if isinstance(value, str) else ""


def error_message(status: int, text: str) -> Message:
    return Message(status=status, headers={"content-type": "application/json"}, body=orjson.dumps({"error": text}))


def to_error_body(message: Message) -> Message:
    """Conditional mode: a failure becomes a 200 JSON message describing it."""
    return message.with_json({ERROR_STATUS: message.status, ERROR_MESSAGE: message.error_message()}, status=200)


def is_error_body(message: Message) -> bool:
    if not message.is_json or message.null:
        return False
    value = message.json()
    return isinstance(value, dict) and isinstance(value.get(ERROR_STATUS), int)


def from_error_body(message: Message) -> Message:
    """The end of a conditional pipeline: an unhandled error body is a failure again."""
    value = message.json()
    return error_message(int(value[ERROR_STATUS]), str(value.get(ERROR_MESSAGE, "")))


def name_from_disposition(value: str) -> str:
    m = _DISPOSITION_NAME.search(value)
    return m.group(1) if m else ""
