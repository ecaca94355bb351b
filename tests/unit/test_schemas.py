"""schemas/ is the public contract of the topics: generated from events/, checked in, never stale."""

from __future__ import annotations

import orjson

from events import codec, schemas
from events.base import new_id, utcnow
from events.jobs import RunJob


def test_schemas_match_the_code() -> None:
    wanted = schemas.documents()
    have = {p.name: p.read_bytes() for p in schemas.SCHEMAS.glob("*.json")}
    assert have == wanted, "schemas/ is out of date: run `make schemas`"


def test_tags_are_unique_and_versioned() -> None:
    tags = [s.__struct_config__.tag for u in (codec.AnyCommand, codec.AnyEvent) for s in schemas._members(u)]
    assert len(tags) == len(set(tags))
    assert all(str(t).rsplit(".", 1)[-1].startswith("v") for t in tags)


def test_a_command_written_from_its_schema_alone_decodes() -> None:
    schema = orjson.loads((schemas.SCHEMAS / "job.run.v1.json").read_bytes())
    required = schema["$defs"]["RunJob"]["required"]
    message = {"type": "job.run.v1", "command_id": new_id(), "stream_id": new_id(),
               "issued_at": utcnow().isoformat(), "user_id": "u", "command": "true"}
    assert set(required) <= set(message)
    decoded = codec.decode_command(orjson.dumps(message))
    assert isinstance(decoded, RunJob) and decoded.command == "true"
