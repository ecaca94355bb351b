"""The job lifecycle as given events / when command / then events (no infrastructure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from events.base import new_id
from events.jobs import (
    CancelJob,
    DeleteJob,
    ExpireJob,
    FinishJob,
    Heartbeat,
    JobCancelled,
    JobCancelRequested,
    JobDeleted,
    JobExpired,
    JobFailed,
    JobHeartbeat,
    JobRequeued,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    ReleaseJob,
    RunJob,
    StartJob,
)
from services.jobs.lifecycle import Job, Policy, decide, due_commands, evolve

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = Policy(lease_timeout=10, max_attempts=2)


def meta(job_id: str, at: datetime = T0) -> dict:
    return {"command_id": new_id(), "stream_id": job_id, "issued_at": at, "actor": "u1"}


def given(*commands: object, at: datetime = T0) -> tuple[Job | None, list]:
    """Fold the events that a sequence of commands decides, as the agent does."""
    job: Job | None = None
    history = []
    for command in commands:
        for event in decide(job, command, at, POLICY):  # type: ignore[arg-type]
            job = evolve(job, event, POLICY)
            history.append(event)
    return job, history


@pytest.fixture
def job_id() -> str:
    return new_id()


def run(job_id: str, ttl: int | None = None) -> RunJob:
    return RunJob(**meta(job_id), user_id="u1", command="true", ttl=ttl)


def test_run_submits_once(job_id: str) -> None:
    job, events = given(run(job_id), run(job_id))
    assert [type(e) for e in events] == [JobSubmitted]
    assert job is not None and job.state == "queued" and job.version == 1
    assert events[0].sequence == 1 and events[0].stream_id == job_id


def test_start_then_finish_succeeds(job_id: str) -> None:
    job, events = given(
        run(job_id),
        StartJob(**meta(job_id), executor_id="e1", attempt=1),
        FinishJob(**meta(job_id), executor_id="e1", attempt=1, exit_code=0, answer_id="a"),
    )
    assert [type(e) for e in events] == [JobSubmitted, JobStarted, JobSucceeded]
    assert job is not None and job.state == "succeeded" and job.answer_id == "a" and job.exit_code == 0
    assert [e.sequence for e in events] == [1, 2, 3]


def test_short_job_reports_start_and_finish_in_one_command(job_id: str) -> None:
    started_at = T0 - timedelta(milliseconds=30)
    job, events = given(
        run(job_id),
        FinishJob(**meta(job_id), executor_id="e1", attempt=1, exit_code=0, answer_id="a", started_at=started_at),
    )
    assert [type(e) for e in events] == [JobSubmitted, JobStarted, JobSucceeded]
    assert [e.sequence for e in events] == [1, 2, 3]
    assert events[1].occurred_at == started_at and events[1].executor_id == "e1"
    assert job is not None and job.state == "succeeded" and job.started_at == started_at


def test_short_job_finish_after_cancel_or_elsewhere_decides_nothing(job_id: str) -> None:
    short = FinishJob(**meta(job_id), executor_id="e2", attempt=1, exit_code=0, started_at=T0)
    job, events = given(run(job_id), CancelJob(**meta(job_id)), short)
    assert [type(e) for e in events] == [JobSubmitted, JobCancelled]
    job, events = given(run(job_id), StartJob(**meta(job_id), executor_id="e1", attempt=1), short)
    assert [type(e) for e in events] == [JobSubmitted, JobStarted] and job is not None and job.executor_id == "e1"


def test_nonzero_exit_fails_with_reason(job_id: str) -> None:
    job, _ = given(
        run(job_id),
        StartJob(**meta(job_id), executor_id="e1", attempt=1),
        FinishJob(**meta(job_id), executor_id="e1", attempt=1, exit_code=3),
    )
    assert job is not None and job.state == "failed" and job.error == "exited with code 3"


def test_finish_from_another_executor_is_ignored(job_id: str) -> None:
    job, events = given(
        run(job_id),
        StartJob(**meta(job_id), executor_id="e1", attempt=1),
        FinishJob(**meta(job_id), executor_id="zombie", attempt=1, exit_code=0),
    )
    assert job is not None and job.state == "running" and len(events) == 2


def test_cancel_queued_is_immediate_and_repeat_is_noop(job_id: str) -> None:
    job, events = given(run(job_id), CancelJob(**meta(job_id)), CancelJob(**meta(job_id)))
    assert [type(e) for e in events] == [JobSubmitted, JobCancelled]
    assert job is not None and job.state == "cancelled"


def test_cancel_running_waits_for_the_process(job_id: str) -> None:
    job, events = given(
        run(job_id),
        StartJob(**meta(job_id), executor_id="e1", attempt=1),
        CancelJob(**meta(job_id)),
        CancelJob(**meta(job_id)),
    )
    assert [type(e) for e in events][-1] is JobCancelRequested and job is not None and job.state == "cancelling"
    job, events = given(
        run(job_id),
        StartJob(**meta(job_id), executor_id="e1", attempt=1),
        CancelJob(**meta(job_id)),
        FinishJob(**meta(job_id), executor_id="e1", attempt=1, exit_code=143),
    )
    assert type(events[-1]) is JobCancelled and job is not None and job.state == "cancelled"


def test_start_after_cancel_is_refused(job_id: str) -> None:
    job, events = given(run(job_id), CancelJob(**meta(job_id)), StartJob(**meta(job_id), executor_id="e", attempt=1))
    assert job is not None and job.state == "cancelled" and len(events) == 2


def test_ttl_expires_only_when_due(job_id: str) -> None:
    job, _ = given(run(job_id, ttl=5))
    assert job is not None and job.deadline == T0 + timedelta(seconds=5)
    assert decide(job, ExpireJob(**meta(job_id)), T0 + timedelta(seconds=4), POLICY) == []
    assert due_commands(job, T0 + timedelta(seconds=5)) == ["expire"]
    events = decide(job, ExpireJob(**meta(job_id)), T0 + timedelta(seconds=5), POLICY)
    assert [type(e) for e in events] == [JobExpired]
    assert evolve(job, events[0], POLICY).state == "expired"


def test_lost_executor_requeues_then_fails(job_id: str) -> None:
    job, _ = given(run(job_id), StartJob(**meta(job_id), executor_id="e1", attempt=1))
    assert job is not None and job.lease_until == T0 + timedelta(seconds=10)
    later = T0 + timedelta(seconds=11)
    assert due_commands(job, later) == ["release"]
    (requeued,) = decide(job, ReleaseJob(**meta(job_id), attempt=1), later, POLICY)
    assert isinstance(requeued, JobRequeued) and requeued.attempt == 2
    job = evolve(job, requeued, POLICY)
    assert job.state == "queued" and job.executor_id is None
    (started,) = decide(job, StartJob(**meta(job_id), executor_id="e2", attempt=2), later, POLICY)
    job = evolve(job, started, POLICY)
    much_later = later + timedelta(seconds=11)
    (failed,) = decide(job, ReleaseJob(**meta(job_id), attempt=2), much_later, POLICY)
    assert isinstance(failed, JobFailed) and "gave up after 2 attempts" in failed.error


def test_heartbeat_extends_the_lease(job_id: str) -> None:
    job, _ = given(run(job_id), StartJob(**meta(job_id), executor_id="e1", attempt=1))
    assert job is not None
    beat_at = T0 + timedelta(seconds=8)
    (beat,) = decide(job, Heartbeat(**meta(job_id, beat_at), executor_id="e1", attempt=1), beat_at, POLICY)
    assert isinstance(beat, JobHeartbeat)
    job = evolve(job, beat, POLICY)
    assert decide(job, ReleaseJob(**meta(job_id), attempt=1), T0 + timedelta(seconds=12), POLICY) == []


def test_delete_marks_deleted_and_ignores_later_commands(job_id: str) -> None:
    job, events = given(
        run(job_id),
        DeleteJob(**meta(job_id)),
        CancelJob(**meta(job_id)),
        DeleteJob(**meta(job_id)),
    )
    assert [type(e) for e in events] == [JobSubmitted, JobDeleted]
    assert job is not None and job.deleted and job.state == "cancelled"


def test_commands_for_unknown_jobs_decide_nothing(job_id: str) -> None:
    assert decide(None, CancelJob(**meta(job_id)), T0) == []
    assert decide(None, StartJob(**meta(job_id), executor_id="e", attempt=1), T0) == []


def test_a_finished_job_is_deleted_once_its_retention_has_passed_then_forgotten(job_id: str) -> None:
    policy = Policy(retention=None, forget_after=3600)
    finish = FinishJob(**meta(job_id), executor_id="e1", attempt=1, exit_code=0, started_at=T0)
    job, _ = given(RunJob(**meta(job_id), user_id="u1", command="true", retention=60), finish)
    assert job is not None and job.retention == 60 and job.finished_at == T0
    assert due_commands(job, T0 + timedelta(seconds=59), policy) == []
    assert due_commands(job, T0 + timedelta(seconds=60), policy) == ["delete"]
    deleted = decide(job, DeleteJob(**{**meta(job_id), "actor": "skyjobs"}), T0 + timedelta(seconds=60), policy)
    assert [type(e) for e in deleted] == [JobDeleted] and deleted[0].actor == "skyjobs"
    job = evolve(job, deleted[0], policy)
    assert due_commands(job, T0 + timedelta(seconds=3599), policy) == []  # long after its commands were committed
    assert due_commands(job, T0 + timedelta(seconds=3600), policy) == ["forget"]


def test_a_run_without_a_retention_takes_the_policys_and_none_keeps_it(job_id: str) -> None:
    finish = FinishJob(**meta(job_id), executor_id="e1", attempt=1, exit_code=0, started_at=T0)
    job, _ = given(run(job_id), finish)
    assert job is not None and job.retention is None
    assert due_commands(job, T0 + timedelta(days=3650), Policy()) == []  # kept until deleted
    submitted = decide(None, run(job_id), T0, Policy(retention=86400))
    assert isinstance(submitted[0], JobSubmitted) and submitted[0].retention == 86400
    deleted_job, _ = given(run(job_id), DeleteJob(**meta(job_id)))  # cancelled (it was queued) and deleted at T0
    assert deleted_job is not None and due_commands(deleted_job, T0 + timedelta(hours=1), Policy()) == ["forget"]
