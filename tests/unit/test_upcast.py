"""Old event versions stored in the log are read as the current version."""

from __future__ import annotations

import orjson
import pytest

from events.codec import DecodeError, decode_event, encode
from events.files import FileStored
from events.jobs import JobHeartbeat

COMMON = {"event_id": "e1", "stream_id": "s1", "sequence": 2, "occurred_at": "2026-01-01T00:00:00Z",
          "correlation_id": "c1"}


def test_a_v1_heartbeat_written_before_the_rename_reads_as_the_current_type() -> None:
    old = {**COMMON, "type": "job.heartbeat.v1", "executor_id": "host-1", "attempt": 1}
    event = decode_event(orjson.dumps(old))
    assert isinstance(event, JobHeartbeat) and event.executor_id == "host-1"
    assert orjson.loads(encode(event))["type"] == "job.heartbeat-recorded.v1"


def test_a_v0_stored_file_gets_the_v1_fields() -> None:
    old = {**COMMON, "sequence": 1, "type": "file.stored.v0", "owner": "alice", "bytes": 12, "name": "a.txt"}
    event = decode_event(orjson.dumps(old))
    assert isinstance(event, FileStored)
    assert (event.owner_id, event.size, event.content_type) == ("alice", 12, "application/octet-stream")


def test_unknown_versions_are_still_errors() -> None:
    with pytest.raises(DecodeError):
        decode_event(orjson.dumps({**COMMON, "type": "job.teleported.v9"}))
