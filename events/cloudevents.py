"""CloudEvents' Kafka binding (binary content mode): the `ce_*` headers every skyjobs message carries.

The value stays the JSON of the command or event (its schema in schemas/); the headers let any
CloudEvents-aware consumer route and trace it without parsing the body.
"""

from __future__ import annotations

import orjson

SOURCE = b"/skyjobs"


def headers(value: bytes) -> list[tuple[str, bytes]]:
    """The headers of one message, read from its own JSON (type, ids, time, subject)."""
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(message, dict):
        return []
    out = [("ce_specversion", b"1.0"), ("ce_source", SOURCE), ("content-type", b"application/json")]
    for header, field in (("ce_type", "type"), ("ce_id", "event_id"), ("ce_id", "command_id"),
                          ("ce_subject", "stream_id"), ("ce_time", "occurred_at"), ("ce_time", "issued_at"),
                          ("ce_correlationid", "correlation_id"), ("ce_causationid", "causation_id")):
        value_of = message.get(field)
        if isinstance(value_of, str) and all(h != header for h, _ in out):
            out.append((header, value_of.encode()))
    return out
