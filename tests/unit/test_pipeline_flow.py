"""The token machine's accounting and the spec stream's decisions, without infrastructure.

Every run must end: a joiner or the run's end waits for exactly the messages sent towards it, so a
share lost or counted twice shows as a run that never ends (or ends early). Random specs made of
splits, joins, parallel branches, conditions with stop/end actions and tees are run by the same
executor the workers use (in process), against an in-memory service.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.pipelines import (
    DeletePipeline,
    PipelineChangeRefused,
    PipelineDeleted,
    PipelineSaved,
    SavePipeline,
)
from services.pipelines import catalog
from services.pipelines.flow import Caller, Settings
from services.pipelines.local import LocalRuns
from services.pipelines.messages import Message
from services.pipelines.spec import parse

NOW = datetime(2026, 11, 24, tzinfo=UTC)


class EchoTransport:
    """Answers every request with its body (or `{"v": 1}`), as JSON."""

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float,
                   max_body: int) -> Message:
        self.calls += 1
        await asyncio.sleep(0)
        if url.endswith("/fail"):
            return Message(status=500, headers={"content-type": "application/json"}, body=b'{"error": "no"}')
        try:
            value = orjson.loads(body) if body else {"v": 1}
        except orjson.JSONDecodeError:
            value = {"v": 1}
        return Message(headers={"content-type": "application/json"}, body=orjson.dumps(value))


steps = st.sampled_from(["/a", "GET /b", "if (isJson) /c", ":text/html /d", "~kept", "? /fail"])
modes = st.sampled_from(["serial next next", "serial stop next", "serial next end", "serial end next",
                         "parallel", "tee", "teeWait", "conditional"])


def pipelines(depth: int) -> st.SearchStrategy[list[Any]]:
    element: st.SearchStrategy[Any] = st.one_of(
        steps, st.just("jsonSplit"), st.just("jsonObject"), st.just({"n": "1"}),
        *([st.deferred(lambda: pipelines(depth - 1))] if depth > 0 else []))
    body = st.lists(element, min_size=1, max_size=5)
    return st.one_of(body, st.tuples(modes, body).map(lambda mb: [mb[0], *mb[1]]))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=pipelines(2), value=st.sampled_from([[1, 2, 3], {"a": 1, "b": [2, 3]}, 5, []]))
def test_every_run_ends(spec: list[Any], value: Any) -> None:
    runs = LocalRuns(EchoTransport(), Settings(self_url="http://127.0.0.1:1", run_timeout=5, max_fanout=50))
    message = Message(headers={"content-type": "application/json"}, body=orjson.dumps(value))
    result = asyncio.run(asyncio.wait_for(runs.run(parse(spec), message, Caller("POST"), drain=True), 10))
    assert result.status != 504, (spec, value, result.body)  # 504: the run did not end (a share was lost)
    if result.status < 400:  # a failure ends a run at once, the rest is dropped; otherwise nothing comes late
        assert runs.late == 0, (spec, value)  # the end was decided before every message had arrived


def _save(user: str, admin: bool = False) -> SavePipeline:
    return SavePipeline(command_id="c", stream_id="p", issued_at=NOW, name="p", spec=msgspec.Raw(b"[]"),
                        user_id=user, admin=admin)


def _delete(user: str, admin: bool = False) -> DeletePipeline:
    return DeletePipeline(command_id="d", stream_id="p", issued_at=NOW, name="p", user_id=user, admin=admin)


def test_a_pipeline_belongs_to_its_creator() -> None:
    [created] = catalog.decide(None, _save("ann"), NOW)
    assert isinstance(created, PipelineSaved) and created.created and created.sequence == 1
    state = catalog.evolve(None, created)
    [replaced] = catalog.decide(state, _save("ann"), NOW)
    assert isinstance(replaced, PipelineSaved) and not replaced.created and replaced.sequence == 2
    [refused] = catalog.decide(state, _save("bob"), NOW)
    assert isinstance(refused, PipelineChangeRefused) and refused.reason == "forbidden"
    [by_admin] = catalog.decide(state, _save("root", admin=True), NOW)
    assert isinstance(by_admin, PipelineSaved) and by_admin.user_id == "ann"  # the owner stays
    assert isinstance(catalog.decide(state, _delete("bob"), NOW)[0], PipelineChangeRefused)
    [deleted] = catalog.decide(state, _delete("ann"), NOW)
    assert isinstance(deleted, PipelineDeleted)
    gone = catalog.evolve(state, deleted)
    [missing] = catalog.decide(gone, _delete("ann"), NOW)
    assert isinstance(missing, PipelineChangeRefused) and missing.reason == "missing"
    [again] = catalog.decide(gone, _save("bob"), NOW)
    assert isinstance(again, PipelineSaved) and again.created and again.user_id == "bob" and again.sequence == 3


def test_events_never_carry_a_nul_character() -> None:
    from events.pipelines import RunStarted
    from services.pipelines.agents import encode_event

    event = RunStarted(event_id="e", stream_id="r", sequence=1, occurred_at=NOW, correlation_id="r",
                       pipeline="p", user_id="u", method="GET", path="/p/x/a\x00b")
    raw = encode_event(event)
    assert b"\\u0000" not in raw and orjson.loads(raw)["path"] == "/p/x/a\ufffdb"
