"""The spec parser: both spellings, every element kind, and errors that point at the element."""

from __future__ import annotations

import pytest

from services.pipelines.errors import SpecError
from services.pipelines.spec import (
    Condition,
    Joiner,
    Mode,
    Pipeline,
    Splitter,
    Step,
    Transform,
    parse,
    parse_step,
)


def test_seed_and_restspace_spellings_read_the_same() -> None:
    seed = parse_step("? :json GET /json/orders/${orderId} ~order", "$[0]")
    rs = parse_step("try if (isJson) GET /json/orders/${orderId} :order", "$[0]")
    assert seed.conditional and rs.conditional
    assert (seed.method, seed.url, seed.rename) == (rs.method, rs.url, rs.rename) == ("GET", "/json/orders/${orderId}", "order")
    assert seed.condition == Condition("mime", mime="json") and rs.condition == Condition("expr", expr="isJson")


@pytest.mark.parametrize("text,expected", [
    ("/templates/t.html", Step("/templates/t.html", "$", method="POST", url="/templates/t.html")),
    ("~$this", Step("~$this", "$", rename="$this")),
    (":$this", Step(":$this", "$", rename="$this")),
    ("#body", Step("#body", "$", condition=Condition("name", name="body"))),
    ("!404,500-599:No+such+user GET /x", Step("!404,500-599:No+such+user GET /x", "$",
                                               condition=Condition("error", ranges=((404, 404), (500, 599)), text="No such user"),
                                               method="GET", url="/x")),
    ("POST items /json/x", Step("POST items /json/x", "$", method="POST", body_path="items", url="/json/x")),
    ("$METHOD /json/$*", Step("$METHOD /json/$*", "$", method="$METHOD", url="/json/$*")),
    ("GET https://api.example.com/a ~.more", Step("GET https://api.example.com/a ~.more", "$", method="GET",
                                                  url="https://api.example.com/a", rename=".more")),
    ("if (status === 404 && header('x') == 'y') GET /a", Step("if (status === 404 && header('x') == 'y') GET /a", "$",
        condition=Condition("expr", expr="status === 404 && header('x') == 'y'"), method="GET", url="/a")),
])
def test_steps(text: str, expected: Step) -> None:
    assert parse_step(text, "$") == expected


def test_elements_and_modes() -> None:
    spec = parse(["targetHost https://api.example.com", "concurrency 4", "trace", "parallel",
                  ["serial end stop", "GET /a"], "jsonSplit", "multipart", {"a": "b"}])
    assert spec.target_host == "https://api.example.com" and spec.concurrency == 4 and spec.trace
    p = spec.pipeline
    assert p.mode == Mode("parallel")
    assert isinstance(p.elements[0], Pipeline) and p.elements[0].mode == Mode("serial", "end", "stop")
    assert isinstance(p.elements[1], Splitter) and isinstance(p.elements[2], Joiner)
    assert isinstance(p.elements[3], Transform)
    assert parse([["conditional"]]).pipeline.elements[0].mode == Mode("conditional", "next", "end")  # type: ignore[union-attr]


@pytest.mark.parametrize("spec,message", [
    ({"a": 1}, "$: a pipeline is a JSON list, not an object"),
    (["GET /a", ["GET /b", "paralel"]], "$[1][1]: unknown mode 'paralel' (did you mean 'parallel'?)"),
    (["jsonSplitt"], "$[0]: unknown splitter 'jsonSplitt' (did you mean 'jsonSplit'?)"),
    (["GET /a", "serial"], "$[1]: the mode directive 'serial' must be the first element of its pipeline"),
    (["serial nxt"], "$[0]: unknown fail action 'nxt': use next, end or stop"),
    (["GET /a", "targetHost https://x.com"], "$[1]: targetHost is an initializer: it may only come at the start"),
    (["targetHost x.com"], "$[0]: targetHost needs a scheme and a host"),
    (["concurrency 0"], "$[0]: concurrency needs a whole number"),
    (["GET"], "$[0]: step 'GET': the method GET needs a URL after it"),
    (["GET /a b c"], "$[0]: step 'GET /a b c': unexpected"),
    (["if (x => 1) GET /a"], "$[0]: condition 'x => 1': function literals"),
    (["if (a GET /a"], "$[0]: the condition 'if (' has no closing parenthesis"),
    (["!4x4 GET /a"], "$[0]: error condition '!4x4'"),
    ([{"a": "new Date()"}], "$[0].a: transformation expression 'new Date()': 'new' is not allowed"),
    ([3], "$[0]: an element is a string, a list or an object, not a number"),
    (["GET ftp://x/y"], "is not a URL"),
])
def test_errors_point_at_the_element(spec: object, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(spec)
    assert message in str(info.value)


def test_limits() -> None:
    with pytest.raises(SpecError, match="over the limit"):
        parse(["GET /a"] * 2000)
    deep: list[object] = ["GET /a"]
    for _ in range(40):
        deep = [deep]
    with pytest.raises(SpecError, match="nest deeper"):
        parse(deep)


def test_safety_of_steps() -> None:
    assert parse(["GET /a", ["GET /b"]]).safe
    assert not parse(["POST /a"]).safe
    assert parse(["POST /a !retry"]).safe
