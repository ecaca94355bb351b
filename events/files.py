"""The file stream (the data manager): events on `skyjobs.file-events`, keyed by file id."""

from __future__ import annotations

from events.base import Event


class FileStored(Event, frozen=True, tag="file.stored.v1"):
    owner_id: str
    name: str
    size: int
    sha256: str
    content_type: str
    job_id: str | None = None  # set for a job's standard output or error


class FilePurged(Event, frozen=True, tag="file.purged.v1"):
    reason: str


FileEvent = FileStored | FilePurged
