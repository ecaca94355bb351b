"""The lease keeper's index: which unfinished jobs a tick looks at (those whose ttl or lease has come)."""

from __future__ import annotations

from datetime import UTC, datetime

from services.jobs.worker import DueIndex, _Liveness


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_only_the_jobs_whose_time_has_come_earliest_first() -> None:
    due = DueIndex()
    due.update(b"queued-no-ttl", _Liveness("queued"))
    due.update(b"queued-ttl", _Liveness("queued", deadline=at(50)))
    due.update(b"running", _Liveness("running", deadline=at(90), lease_until=at(30)))
    due.update(b"done", _Liveness("succeeded", deadline=at(10)))
    assert due.due(20) == [] and set(due.at) == {b"queued-ttl", b"running"}
    due.update(b"running", _Liveness("running", deadline=at(90), lease_until=at(60)))  # a heartbeat
    assert due.due(55) == [b"queued-ttl"]
    assert due.due(55) == []  # handed out once: back only when updated or retried
    due.retry(b"queued-ttl", 56)
    due.update(b"running", _Liveness("succeeded", deadline=at(90), lease_until=at(60)))  # it finished
    assert due.due(1000) == [b"queued-ttl"] and due.at == {}
