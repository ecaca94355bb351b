"""The JavaScript-subset evaluator: semantics, refusals and budgets."""

from __future__ import annotations

import pytest

from services.pipelines.errors import BudgetExceeded, ExpressionError
from services.pipelines.expressions import UNDEFINED, Budget, evaluate


@pytest.mark.parametrize("expr,expected", [
    ("1 + 2 * 3", 7), ("2 ** 3 ** 2", 512), ("(1 + 2) * 3", 9), ("7 % 4", 3), ("10 / 4", 2.5), ("1 - 2 - 3", -4),
    ("'a' + 1", "a1"), ("1 + '2'", "12"), ("`x${1 + 1}y`", "x2y"), ("'5' * 2", 10),
    ("1 === 1.0", True), ("'1' == 1", True), ("'1' === 1", False), ("null == undefined", True),
    ("null === undefined", False), ("!0", True), ("!!'a'", True), ("typeof 'a'", "string"),
    ("typeof missing", "undefined"), ("a && b", 0), ("c || 'd'", "d"), ("null ?? 3", 3), ("0 ?? 3", 0),
    ("a ? 'y' : 'n'", "y"), ("o.p.q", 1), ("o['p'].q", 1), ("o?.x?.y", UNDEFINED), ("'p' in o", True),
    ("list.length", 3), ("list[1]", 2), ("list.indexOf(3)", 2), ("list.includes(4)", False),
    ("list.slice(1).join('-')", "2-3"), ("'Abc'.toLowerCase()", "abc"), ("' x '.trim()", "x"),
    ("'a,b'.split(',')", ["a", "b"]), ("'abc'.startsWith('ab')", True), ("'abc'.replace('b', 'X')", "aXc"),
    ("'abc'.substring(1, 2)", "b"), ("'7'.padStart(3, '0')", "007"), ("Math.max(1, 9, 3)", 9),
    ("Math.round(2.5)", 3), ("Math.floor(-1.5)", -2), ("JSON.stringify({a: [1]})", '{"a":[1]}'),
    ("JSON.parse('[1]')[0]", 1), ("Object.keys(o)", ["p"]), ("Array.isArray(list)", True),
    ("[1, 2].concat([3])", [1, 2, 3]), ("({a: 1, b})", {"a": 1, "b": 0}), ("String(12)", "12"),
    ("Number('3.5')", 3.5), ("(1.005).toFixed(1)", "1.0"), ("1 / 0", float("inf")), ("-'x' !== -'x'", True),
])
def test_semantics(expr: str, expected: object) -> None:
    names = {"a": 1, "b": 0, "c": "", "o": {"p": {"q": 1}}, "list": [1, 2, 3]}
    assert evaluate(expr, names) == expected


@pytest.mark.parametrize("expr,reason", [
    ("x => x", "function literals"), ("(x) => x", "function literals"), ("function f() {}", "function literals"),
    ("new Date()", "'new' is not allowed"), ("/a/.test(s)", "regular expression literals"),
    ("[...xs]", "spread"), ("f(...xs)", "spread"), ("a = 1", "assignment"), ("this.x", "'this' is not allowed"),
    ("1 +", "unexpected"), ("'open", "unexpected character"), ("", "empty expression"), ("a b", "unexpected 'b'"),
])
def test_refusals(expr: str, reason: str) -> None:
    with pytest.raises(ExpressionError, match=reason):
        evaluate(expr, {})


def test_errors_name_the_expression() -> None:
    with pytest.raises(ExpressionError) as info:
        evaluate("a.b.c", {"a": 1})
    assert "a.b.c" in str(info.value) and "cannot read property 'c' of undefined" in str(info.value)
    with pytest.raises(ExpressionError, match="is not a function"):
        evaluate("a()", {"a": 1})


def test_budgets_bound_time_and_memory() -> None:
    with pytest.raises(BudgetExceeded, match="step budget"):
        evaluate("[1,2,3].concat([4]).length + 1", {}, Budget(steps=3))
    with pytest.raises(BudgetExceeded, match="limit"):
        evaluate("'x'.repeat(10000000)", {}, Budget(max_size=1000))
    with pytest.raises(BudgetExceeded):
        evaluate("s + s", {"s": "y" * 800}, Budget(max_size=1000))
    with pytest.raises(ExpressionError, match="nested too deeply"):
        evaluate("(" * 200 + "1" + ")" * 200, {})
