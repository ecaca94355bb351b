"""The lease keeper's index: which jobs a tick looks at (those whose ttl, lease or retention has come)."""

from __future__ import annotations

from datetime import UTC, datetime

from services.due_times import DueTimes
from services.jobs.lifecycle import Policy
from services.jobs.worker import _Liveness, index_due

POLICY = Policy(forget_after=100)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_only_the_jobs_whose_time_has_come_earliest_first() -> None:
    due = DueTimes[float]()
    index_due(due, b"queued-no-ttl", _Liveness("queued"), POLICY)
    index_due(due, b"queued-ttl", _Liveness("queued", deadline=at(50)), POLICY)
    index_due(due, b"running", _Liveness("running", deadline=at(90), lease_until=at(30)), POLICY)
    index_due(due, b"done", _Liveness("succeeded", deadline=at(10)), POLICY)
    assert due.pop_due(20) == [] and set(due.at) == {b"queued-ttl", b"running"}
    index_due(due, b"running", _Liveness("running", deadline=at(90), lease_until=at(60)), POLICY)  # a heartbeat
    assert due.pop_due(55) == [b"queued-ttl"]
    assert due.pop_due(55) == []  # handed out once: back only when set again or retried
    due.retry(b"queued-ttl", 56)
    index_due(due, b"running", _Liveness("succeeded", deadline=at(90), lease_until=at(60)), POLICY)  # it finished
    assert due.pop_due(1000) == [b"queued-ttl"] and set(due.at) == {b"queued-ttl"}


def test_a_retry_gives_way_to_a_new_time() -> None:
    due = DueTimes[float]()
    due.set(b"k", 10.0)
    assert due.pop_due(10.0) == [b"k"]
    due.retry(b"k", 11.0)
    due.set(b"k", 20.0)  # changed meanwhile (a heartbeat, a new due time)
    assert due.pop_due(15.0) == [] and due.pop_due(20.0) == [b"k"]
    due.discard(b"k")
    due.retry(b"k", 21.0)
    assert due.pop_due(30.0) == []


def test_finished_jobs_fall_due_at_the_end_of_their_retention_deleted_ones_when_they_may_be_forgotten() -> None:
    due = DueTimes[float]()
    index_due(due, b"kept", _Liveness("succeeded", finished_at=at(10)), POLICY)  # no retention: never
    index_due(due, b"retained", _Liveness("failed", finished_at=at(10), retention=30), POLICY)
    index_due(due, b"deleted", _Liveness("cancelled", deleted=True, finished_at=at(10)), POLICY)
    index_due(due, b"deleted-late", _Liveness("succeeded", deleted=True, finished_at=at(10), retention=500), POLICY)
    assert due.pop_due(1000) == [b"retained", b"deleted", b"deleted-late"]
    assert [due.at.get(k) for k in (b"kept",)] == [None]
