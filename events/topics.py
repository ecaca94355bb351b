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
WORK_COMMANDS = "skyjobs.work-commands"
WORK_EVENTS = "skyjobs.work-events"
DEAD_LETTERS = "skyjobs.dead-letters"

# Worker services and the task proxy (seed 004). The registry is one stream (one key, one partition
# in use); task events are keyed by task id. Neither needs a faust table: the router folds the
# registry from its events and keeps in-flight tasks unacknowledged instead.
SERVICE_COMMANDS = "skyjobs.service-commands"
SERVICE_EVENTS = "skyjobs.service-events"
TASK_EVENTS = "skyjobs.task-events"

# Changelogs of the job worker's faust tables (faust names them "<app id>-<table>-changelog").
# Created up front with the partition count of the job topics: faust creating them itself at
# start-up races its own partition assignment.
JOB_STATE_CHANGELOG = "skyjobs-jobs-jobs-changelog"
WORKS_CHANGELOG = "skyjobs-jobs-works-changelog"

# Pipelines (seed 002): specs (key = name), runs and their steps (key = run id), and the work in
# flight: tokens (key = run id + token id, spread over partitions) and arrivals at joiners (key = run id).
PIPELINE_COMMANDS = "skyjobs.pipeline-commands"
PIPELINE_EVENTS = "skyjobs.pipeline-events"
PIPELINE_RUNS = "skyjobs.pipeline-runs"
PIPELINE_STEPS = "skyjobs.pipeline-steps"
PIPELINE_WORK = "skyjobs.pipeline-work"
PIPELINE_PARTS = "skyjobs.pipeline-parts"
PIPELINE_JOURNAL = "skyjobs.pipeline-journal"  # what token attempts sent (services/pipelines/journal.py)
PIPELINE_JOINS = "skyjobs.pipeline-joins"  # what joiners hold (services/pipelines/tables.py)
PIPELINE_SPECS_CHANGELOG = "skyjobs-pipelines-pipeline-specs-changelog"
_DAY = 24 * 3600 * 1000

TOPICS = (
    TopicSpec(JOB_COMMANDS, retention_ms=7 * 24 * 3600 * 1000),
    TopicSpec(JOB_EVENTS),
    TopicSpec(FILE_EVENTS),
    TopicSpec(DEAD_LETTERS),
    TopicSpec(SERVICE_COMMANDS, retention_ms=7 * 24 * 3600 * 1000),
    TopicSpec(SERVICE_EVENTS),
    TopicSpec(TASK_EVENTS),
    TopicSpec(JOB_STATE_CHANGELOG, compacted=True),
    TopicSpec(WORK_COMMANDS, retention_ms=7 * 24 * 3600 * 1000),
    TopicSpec(WORK_EVENTS),
    TopicSpec(WORKS_CHANGELOG, compacted=True),
    TopicSpec(PIPELINE_COMMANDS, retention_ms=7 * _DAY),
    TopicSpec(PIPELINE_EVENTS),
    TopicSpec(PIPELINE_RUNS),
    TopicSpec(PIPELINE_STEPS),
    TopicSpec(PIPELINE_WORK, retention_ms=_DAY),  # tokens carry the caller's Authorization: kept one day
    TopicSpec(PIPELINE_PARTS, retention_ms=_DAY),
    TopicSpec(PIPELINE_JOURNAL, compacted=True),
    TopicSpec(PIPELINE_JOINS, compacted=True),
    TopicSpec(PIPELINE_SPECS_CHANGELOG, compacted=True),
)
