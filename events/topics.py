"""Topic names and their settings: the public contract of the event log."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicSpec:
    name: str
    compacted: bool = False
    # None keeps history forever: the event log is the source of truth.
    retention_ms: int | None = None


JOB_COMMANDS = "skyjobs.job-commands"
JOB_EVENTS = "skyjobs.job-events"
FILE_EVENTS = "skyjobs.file-events"
DEAD_LETTERS = "skyjobs.dead-letters"

# Changelogs of the job worker's faust tables (faust names them "<app id>-<table>-changelog").
# Created up front with the partition count of the job topics: faust creating them itself at
# start-up races its own partition assignment.
JOB_STATE_CHANGELOG = "skyjobs-jobs-jobs-changelog"
ACTIVE_JOBS_CHANGELOG = "skyjobs-jobs-active-jobs-changelog"

TOPICS = (
    TopicSpec(JOB_COMMANDS, retention_ms=7 * 24 * 3600 * 1000),
    TopicSpec(JOB_EVENTS),
    TopicSpec(FILE_EVENTS),
    TopicSpec(DEAD_LETTERS),
    TopicSpec(JOB_STATE_CHANGELOG, compacted=True),
    TopicSpec(ACTIVE_JOBS_CHANGELOG, compacted=True),
)
