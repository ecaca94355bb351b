"""Conformance: each case is a spec, a request and the expected response, run by the workers' executor
and flow (in one process: services/pipelines/local.py) against real local HTTP services
(tests/unit/pipeline_services.py), including the seed's three examples. tests/e2e/test_pipelines.py
runs the same cases through the whole stack (Kafka, the pipeline workers, the API)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from services.pipelines.flow import Caller, Settings
from services.pipelines.local import LocalRuns
from services.pipelines.messages import Message
from services.pipelines.spec import parse
from services.pipelines.transport import HttpTransport
from tests.unit.pipeline_services import Recorder, fixture_app, serving


@dataclass
class Env:
    url: str
    runs: LocalRuns
    app: Any
    recorder: Recorder

    async def put(self, key: str, value: Any) -> None:
        body = value if isinstance(value, bytes) else orjson.dumps(value)
        await self.app.state.documents.put(key, body, "application/json")


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[Env]:
    recorder = Recorder()
    app = fixture_app(recorder)
    async with serving(app) as url:
        transport = HttpTransport()
        yield Env(url, LocalRuns(transport, Settings(self_url=url, max_fanout=20)), app, recorder)
        await transport.close()


@dataclass
class Case:
    spec: Any
    path: str = ""  # service path
    method: str = "POST"
    body: Any = None
    status: int = 200
    json: Any = None
    contains: str | None = None
    docs: dict[str, Any] = field(default_factory=dict)
    query: tuple[tuple[str, str], ...] = ()
    headers: dict[str, str] = field(default_factory=dict)


async def run(env: Env, case: Case) -> Message:
    for key, value in case.docs.items():
        await env.put(key, value)
    body = b"" if case.body is None else case.body if isinstance(case.body, bytes) else orjson.dumps(case.body)
    message = Message(headers={"content-type": "application/json"} if case.body is not None else {}, body=body,
                      method=case.method)
    caller = Caller(case.method, "/p/test", case.path, case.query, case.headers)
    return await env.runs.run(parse(case.spec), message, caller)


CASES: dict[str, Case] = {
    # --- the seed's examples ---
    "seed html page template": Case(["GET /json/pagedata.json", "/templates/pagetemplate.html"],
                                    docs={"json/pagedata.json": {"title": "Hi <b>"},
                                          "templates/pagetemplate.html": b"<h1>{{ title }}</h1>"},
                                    contains="<h1>Hi &lt;b&gt;</h1>"),
    "seed fetch related data": Case(
        ["GET /json/order-items/$>0", ["~$this", "GET /json/orders/${orderId} ~order", "GET /json/users/${userId} ~user"],
         "jsonObject"], path="/123/456", method="GET",
        docs={"json/order-items/123": {"orderId": 7, "userId": "u1"}, "json/orders/7": {"total": 10},
              "json/users/u1": {"name": "Ann"}},
        json={"orderId": 7, "userId": "u1", "order": {"total": 10}, "user": {"name": "Ann"}}),
    "restspace spelling of renames": Case(
        ["GET /json/order-items/$>0", [":$this", "GET /json/orders/${orderId} :order"], "jsonObject"],
        path="/123", method="GET", docs={"json/order-items/123": {"orderId": 7}, "json/orders/7": {"total": 10}},
        json={"orderId": 7, "order": {"total": 10}}),
    # --- steps and url macros ---
    "default method is POST": Case(["/echo/x"], body={"a": 1}, json={"method": "POST", "path": "/echo/x", "query": "",
                                                                     "body": '{"a":1}', "auth": None, "name": ""}),
    "$METHOD is the caller's": Case(["$METHOD /echo/m", {"m": "method"}], method="PUT", json={"m": "PUT"}),
    "$* service path and query": Case(["GET /echo/$*", {"p": "path", "q": "query"}], path="/a/b", query=(("x", "1"),),
                                      json={"p": "/echo/a/b", "q": "x=1"}),
    "$<0 last segment, slice": Case(["GET /echo/$<0/$>0<1", {"p": "path"}], path="/a/b/c", json={"p": "/echo/c/a/b"}),
    "$>n default": Case(["GET /echo/$>3:(none)", {"p": "path"}], path="/a", json={"p": "/echo/none"}),
    "$?(key) and $N*": Case(["GET /echo/$?(k)/$B*", {"p": "path"}], query=(("k", "v"),), json={"p": "/echo/v/p/test"}),
    "${list[]} fans out and joins": Case(["GET /echo/${ids[]}", {"p": "path"}, "jsonObject"], method="POST",
                                         body={"ids": [1, 2]}, json={"0": {"p": "/echo/1"}, "1": {"p": "/echo/2"}, "length": 2}),
    "missing ${x} is a 500 for the step": Case(["GET /echo/${nope}"], body={"a": 1}, status=500, contains="not present"),
    "empty list gives a null message": Case(["GET /echo/${ids[]}", "jsonObject"], body={"ids": []}, json={}),
    "body json path": Case(["POST inner /echo/b", {"b": "body"}], body={"inner": {"z": 1}}, json={"b": '{"z":1}'}),
    "failure ends the run": Case(["GET /status/404", "GET /echo/never"], status=404, contains="status 404"),
    "empty request passes the message": Case(["~kept", {"n": "$this"}], body={"x": 1}, json={"n": {"x": 1}}),
    # --- conditions ---
    "seed :json condition": Case([":json GET /echo/j", ":text/html GET /status/500"], body={"a": 1},
                                 contains='"path":"/echo/j"'),
    "seed #name condition in parallel": Case([["GET /echo/a ~a", "GET /echo/b ~b"], "#b GET /echo/only-b", {"p": "path"}],
                                             method="GET", json={"p": "/echo/only-b"}),
    "restspace if() condition": Case(["if (isJson && body().n > 1) GET /echo/yes", {"p": "path"}], body={"n": 2},
                                     json={"p": "/echo/yes"}),
    "if() false passes the message on": Case(["if (method === 'DELETE') GET /status/500"], body={"n": 2}, json={"n": 2}),
    "seed conditional mode with handler": Case(["? GET /json/data0", ["!404 GET /json/default", "/transform/transf-default"]],
                                               docs={"json/default": {"a": 1}, "transform/transf-default": {"b": "a + 1"}},
                                               method="GET", json={"b": 2}),
    "try + if(status) spelling": Case(["try GET /status/503", ["if (status === 503) GET /json/default"]],
                                      docs={"json/default": {"a": 1}}, method="GET", json={"a": 1}),
    "unhandled error turns back into the failure": Case(["? GET /status/500", ["!404 GET /json/default"]],
                                                         status=500, contains="status 500"),
    "error text check": Case(["? GET /status/404", ["!404:status+404 GET /echo/handled", {"p": "path"}]],
                             json={"p": "/echo/handled"}),
    # --- modes ---
    "parallel outputs named by index, joined": Case([["GET /echo/a", "GET /echo/b"], "jsonObject",
                                                     {"paths": "[$['0'].path, $['1'].path]"}],
                                                    json={"paths": ["/echo/a", "/echo/b"]}),
    "serial subpipeline inside parallel": Case([[["GET /echo/a", {"x": "path"}], "GET /echo/b ~b"], "jsonObject",
                                                {"a": "$['0'].x", "b": "b.path"}], json={"a": "/echo/a", "b": "/echo/b"}),
    "serial end action leaves early": Case(["serial next end", "GET /echo/one", "GET /echo/two"],
                                           contains='"/echo/one"'),
    "serial stop on failed condition drops": Case(["serial stop next", ":text/html GET /echo/x"], body={"a": 1},
                                                  status=204),
    "tee continues with the original": Case([["tee", "GET /echo/side"], {"v": "v"}], body={"v": 1}, json={"v": 1}),
    "teeWait waits": Case([["teeWait", "GET /slow/50"], {"v": "v"}], body={"v": 2}, json={"v": 2}),
    # --- splitters and joiners ---
    "jsonSplit then jsonObject": Case(["jsonSplit", "/double", "jsonObject"], body={"a": 2, "b": 3},
                                      json={"a": 4, "b": 6}),
    "jsonSplit of a list": Case(["jsonSplit", "/double", "jsonObject"], body=[1, 2], json={"0": 2, "1": 4, "length": 2}),
    "multipart join then split": Case([["GET /echo/a ~a", "GET /echo/b ~b"], "multipart", "split", "jsonObject",
                                       {"k": "Object.keys($).sort()"}], json={"k": ["a", "b"]}),
    "zip then unzip": Case([["GET /echo/a ~a", "GET /echo/b ~b"], "zip", "unzip", "jsonObject",
                            {"n": "Object.keys($).length"}], json={"n": 2}),
    # --- accounting: joiners wait for exactly the messages sent towards them ---
    "a dropped part still completes the join": Case(["serial stop next", "jsonSplit", "if (body() > 1) /double",
                                                     "jsonObject"], body=[1, 2, 3], json={"1": 4, "2": 6, "length": 2}),
    "parts that leave early skip the join": Case(["serial next end", "jsonSplit", "/double", "jsonObject"],
                                                 body=[1, 2], json={}),
    "teeWait with a fork inside waits for all of it": Case([["teeWait", "jsonSplit", "/double"], {"v": "v"}],
                                                           body={"v": 2, "w": 3}, json={"v": 2}),
    "a top-level parallel pipeline": Case(["parallel", "GET /echo/a", "GET /echo/b"], contains='"path":"/echo/'),
    "a failed branch fails the run": Case([["GET /status/500", "GET /slow/50"], "jsonObject"], status=500,
                                          contains="status 500"),
    "all branches dropped give an empty join": Case([["if (name !== '0') GET /echo/a",
                                                      "if (name === 'zz') GET /echo/b"], "jsonObject"],
                                                    body={"a": 1}, json={}),
    "a join after a join": Case(["jsonSplit", "/double", "jsonObject", "jsonSplit", "/double", "jsonObject"],
                                body={"a": 1, "b": 2}, json={"a": 4, "b": 8}),
    # --- transformations and variables ---
    "transformation with helpers": Case([{"total": "expressionReduce(items, 0, '$previous + price')",
                                          "names": ["expressionMap()", "items", "name.toUpperCase()"],
                                          "first": "items[0].name", "gone": "undefined"}],
                                        body={"items": [{"name": "a", "price": 2}, {"name": "b", "price": 3}]},
                                        json={"total": 5, "names": ["A", "B"], "first": "a"}),
    "variables from a rename": Case(["GET /echo/v ~$got", {"saved": "$got.path", "kept": "x"}], body={"x": 1},
                                    json={"saved": "/echo/v", "kept": 1}),
    "transformation error is a 400 naming it": Case([{"x": "a.b.c"}], body={"a": 1}, status=400, contains="a.b.c"),
    # --- initializers and guards ---
    "host outside the allow-list": Case(["GET http://example.invalid/x"], status=403, contains="allow-list"),
    "fan-out limit": Case(["GET /echo/${ids[]}"], body={"ids": list(range(50))}, status=400, contains="fan-out"),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_case(env: Env, name: str) -> None:
    case = CASES[name]
    result = await run(env, case)
    assert result.status == case.status, (result.status, result.body[:500])
    if case.json is not None:
        assert orjson.loads(result.body) == case.json
    if case.contains is not None:
        assert case.contains in result.body.decode(), result.body[:500]


async def test_seed_write_hook_writes_then_emails(env: Env) -> None:
    env.recorder.calls.clear()
    result = await run(env, Case(["POST /json/records/$*", "/sendemail"], path="/mno/pqr", body={"r": 1}))
    assert result.status == 200 and orjson.loads(result.body) == {"sent": True}
    assert (await env.app.state.documents.get("json/records/mno/pqr"))[0] == b'{"r":1}'
    assert [c["path"] for c in env.recorder.calls] == ["/sendemail"]


async def test_seed_write_hook_does_not_email_when_the_write_fails(env: Env) -> None:
    env.recorder.calls.clear()
    result = await run(env, Case(["POST /json/records/$*", "/sendemail"], path="/x", body=b"not json"))
    assert result.status == 400 and env.recorder.calls == []


async def test_target_host_gets_the_authorization_only(env: Env) -> None:
    spec = [f"targetHost {env.url}", "GET /echo/a", {"auth": "auth"}]
    result = await run(env, Case(spec, headers={"authorization": "Bearer t"}))
    assert orjson.loads(result.body) == {"auth": "Bearer t"}
    other = LocalRuns(env.runs.executor.transport,
                      Settings(self_url="http://127.0.0.1:1", allowed_hosts=frozenset({"127.0.0.1"})))
    absolute = await other.run(parse([f"GET {env.url}/echo/a", {"auth": "auth"}]), Message(),
                               Caller("GET", headers={"authorization": "Bearer t"}))
    assert orjson.loads(absolute.body) == {"auth": None}


async def test_parallel_branches_run_at_once(env: Env) -> None:
    started = time.perf_counter()
    result = await run(env, Case([["GET /slow/100"] * 10, "jsonObject"], method="GET"))
    elapsed = time.perf_counter() - started
    assert result.status == 200 and len(orjson.loads(result.body)) == 11  # 10 + length
    assert elapsed < 0.6


async def test_step_after_parallel_starts_as_soon_as_its_input_arrives(env: Env) -> None:
    env.recorder.calls.clear()
    started = time.perf_counter()
    result = await run(env, Case([["GET /slow/20", "GET /slow/400"], "GET /echo/after"], method="GET"))
    assert result.status == 200
    first_after = next(c for c in env.recorder.calls if c["path"] == "/echo/after")
    assert first_after and time.perf_counter() - started >= 0.4  # the run waits for both
    # the first /echo/after was recorded long before the slow branch finished
    assert len([c for c in env.recorder.calls if c["path"] == "/echo/after"]) == 2


async def test_concurrency_initializer_serialises_requests(env: Env) -> None:
    started = time.perf_counter()
    result = await run(env, Case(["concurrency 1", ["GET /slow/60", "GET /slow/60", "GET /slow/60"], "jsonObject"]))
    assert result.status == 200 and time.perf_counter() - started >= 0.18
