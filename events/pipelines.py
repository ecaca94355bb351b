"""The pipeline streams (seed 002).

Specs, one stream per pipeline name (key = the name):
  `skyjobs.pipeline-commands`  pipeline.save / pipeline.delete (from the API)
  `skyjobs.pipeline-events`    pipeline.saved / pipeline.deleted / pipeline.change-refused (the spec agent)

Runs, one stream per run (key = the run id):
  `skyjobs.pipeline-runs`      pipeline.run-started, pipeline.fanned-out, pipeline.joined, pipeline.run-ended
  `skyjobs.pipeline-steps`     pipeline.step-requested, pipeline.step-responded (one pair per HTTP request)

Work in flight (internal, short retention; these carry the caller's Authorization, events never do):
  `skyjobs.pipeline-work`      pipeline.continue: a token to move on (key = run id + token id, so the
                               branches and split parts of one run spread over the partitions)
  `skyjobs.pipeline-parts`     pipeline.arrive: a message (or a share) for a joiner or the run's end
                               (key = run id: one run's joins are decided in one place)

A run's events are written by every worker that runs one of its tokens: `sequence` orders the
events of one token (`token_id`), not of the whole run. Bodies over the inline limit travel by
reference (`file_id`, a file of the data manager, with its file.stored event), never inline.
"""

from __future__ import annotations

from typing import Any

import msgspec

from events.base import Command, Event


class Body(msgspec.Struct, frozen=True, omit_defaults=True):
    """An HTTP message of a pipeline: inline bytes (base64 in JSON) or a file by reference."""

    status: int = 200
    headers: dict[str, str] = {}
    data: bytes | None = None
    file_id: str | None = None
    size: int = 0
    name: str = ""
    null: bool = False
    method: str = "POST"


class Frame(msgspec.Struct, array_like=True):
    """Where a token is in one (sub)pipeline: the next element, the mode, the token's share (credit) of
    the scope, and what its output does when it leaves (next, end, stop; run, wait, discard)."""

    path: str
    index: int
    stop: int
    kind: str  # serial | single (one element of a parallel pipeline)
    mode: str  # "<kind> <fail action> <succeed action>"
    conditional: bool
    skip_test: bool
    scope: str
    credit: str  # a fraction, "1/3"
    exit: str
    exit_conditional: bool
    method: str  # of the message that entered the scope (a joined message gets it)
    after: str | None = None  # teeWait: what the original message does once the side branch ended
    after_conditional: bool = False
    original: Any = None  # teeWait: the original message (a Body)


class Caller(msgspec.Struct, frozen=True, omit_defaults=True):
    method: str
    base_path: str
    service_path: str = ""
    query: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    user_id: str = ""
    role: str = "user"
    depth: int = 0


class Token(msgspec.Struct, omit_defaults=True):
    """One message at one place of a run, with what any worker needs to move it on."""

    token_id: str
    pipeline: str
    spec: msgspec.Raw
    caller: Caller
    deadline: float  # epoch seconds: the run fails (504) when it has not ended by then
    frames: list[Frame]
    message: Body
    variables: dict[str, Any] = {}
    budget: int = 1000  # requests this token and its descendants may still make
    tracked: bool = True
    order: list[int] = []
    pending: str | None = None
    pending_conditional: bool = False
    route: str | None = None  # a fixed Kafka key: every token of a run with `concurrency` on one worker


# --- spec commands and events ---------------------------------------------------------------------


class SavePipeline(Command, frozen=True, tag="pipeline.save.v1"):
    name: str
    spec: msgspec.Raw
    user_id: str
    admin: bool = False


class DeletePipeline(Command, frozen=True, tag="pipeline.delete.v1"):
    name: str
    user_id: str
    admin: bool = False


class PipelineSaved(Event, frozen=True, tag="pipeline.saved.v1"):
    """A pipeline's spec was stored (created, or replaced by its owner or an admin)."""

    name: str
    spec: msgspec.Raw
    user_id: str  # the owner
    created: bool


class PipelineDeleted(Event, frozen=True, tag="pipeline.deleted.v1"):
    name: str
    user_id: str  # the owner


class PipelineChangeRefused(Event, frozen=True, tag="pipeline.change-refused.v1"):
    """A save or delete that was not applied: the pipeline is another user's, or there is none."""

    name: str
    user_id: str  # who asked
    reason: str  # forbidden | missing


# --- run commands (internal) -----------------------------------------------------------------------


class ContinueRun(Command, frozen=True, tag="pipeline.continue.v1"):
    """Move a token on (the first token of a run starts it)."""

    token: Token


class Arrive(Command, frozen=True, tag="pipeline.arrive.v1"):
    """A token at an accounting point: a joiner (`<scope>#<index>`), a teeWait's end, or the run's end.

    outcome: `message` (the token's message arrives), `share` (only its credit: a message that was
    dropped; the joined message carries the share on), `notice` (a message that skipped the point; it
    carries its share on itself), `failed` (the run fails with `failure`), `expired` (the deadline passed).
    """

    point: str
    kind: str
    level: int
    outcome: str
    token: Token | None = None  # none for `expired`
    failure: Body | None = None


# --- run events ----------------------------------------------------------------------------------


class RunStarted(Event, frozen=True, tag="pipeline.run-started.v1"):
    pipeline: str
    user_id: str
    method: str
    path: str
    query: str = ""
    depth: int = 0
    deadline: float = 0.0


class RunFannedOut(Event, frozen=True, tag="pipeline.fanned-out.v1"):
    """One message became several at `element`: parallel branches, split parts, `${list[]}` requests, a tee."""

    token_id: str
    element: str
    kind: str
    tokens: list[str]
    user_id: str | None = None


class RunJoined(Event, frozen=True, tag="pipeline.joined.v1"):
    """An accounting point had all its parts: `messages` of them joined into the message of `token_id`."""

    token_id: str
    point: str
    kind: str
    parts: int
    messages: int
    user_id: str | None = None


class RunEnded(Event, frozen=True, tag="pipeline.run-ended.v1"):
    """The run's answer (what the caller gets): succeeded below 400, failed otherwise."""

    state: str  # succeeded | failed
    status: int
    output: Body
    error: str | None = None
    user_id: str | None = None  # whose run: every event of a run names it (they come from several topics)


class StepRequested(Event, frozen=True, tag="pipeline.step-requested.v1"):
    """A step's request is about to be sent (for an unsafe method: after the worker's journal knows it)."""

    token_id: str
    step: str  # unique in the run: token, element, request index
    element: str  # the step's place in the spec, "$[2][1]"
    method: str
    url: str
    retry: int = 0  # >0: sent again by another worker after the first was lost (safe or !retry steps)
    user_id: str | None = None


class StepResponded(Event, frozen=True, tag="pipeline.step-responded.v1"):
    token_id: str
    step: str
    element: str
    status: int
    duration_ms: float
    output_name: str = ""
    size: int = 0
    content_type: str = ""
    error: str | None = None
    user_id: str | None = None


PipelineCommand = SavePipeline | DeletePipeline
RunCommand = ContinueRun | Arrive
SpecEvent = PipelineSaved | PipelineDeleted | PipelineChangeRefused
RunEvent = RunStarted | RunFannedOut | RunJoined | RunEnded
StepEvent = StepRequested | StepResponded
PipelineEvent = SpecEvent | RunEvent | StepEvent
