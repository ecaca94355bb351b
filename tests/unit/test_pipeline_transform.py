"""Transformations: keys, loops, variables and every helper."""

from __future__ import annotations

from typing import Any

import pytest

from services.pipelines.errors import BudgetExceeded, ExpressionError
from services.pipelines.expressions import Budget
from services.pipelines.transform import TransformContext, format_date, new_date, transform
from services.pipelines.urls import UrlContext

DATA = {"items": [{"name": "b", "price": 3, "kind": "x"}, {"name": "a", "price": 2, "kind": "y"},
                  {"name": "c", "price": 5, "kind": "x"}], "title": "T", "obj": {"k1": {"v": 1}, "k2": {"v": 2}}}


def t(spec: Any, data: Any = DATA, variables: dict[str, Any] | None = None) -> Any:
    return transform(spec, data, TransformContext(UrlContext("GET", "/p/x", "/s/1"), "nm", variables if variables is not None else {}))


def test_keys() -> None:
    assert t({"$": "$", "extra": "title + '!'"}) == {**DATA, "extra": "T!"}
    assert t({"a.b.c": "1"}) == {"a": {"b": {"c": 1}}}
    assert t({"list[0]": "title"}) == {"list": ["T"]}
    assert t({"$$x": "1"}) == {"$x": 1}
    assert t({"gone": "undefined", "kept": "null"}) == {"kept": None}
    assert t(["title", "items.length"]) == ["T", 3]
    assert t("title") == "T"


def test_loops() -> None:
    assert t({"items": "items", "items[it]": "it.value.name + it.index"}) == {"items": ["b0", "a1", "c2"]}
    assert t({"obj": "obj", "obj{e}": "e.key + v"}) == {"obj": {"k1": "k11", "k2": "k22"}}


def test_variables() -> None:
    variables: dict[str, Any] = {"$in": 4}
    assert t({"$total": "items.length", "x": "$in + 1"}, variables=variables) == {"x": 5}
    assert variables["$total"] == 3


@pytest.mark.parametrize("spec,expected", [
    (["transformMap()", "items", {"n": "name", "t": "outer.title"}], [{"n": "b", "t": "T"}, {"n": "a", "t": "T"}, {"n": "c", "t": "T"}]),
    (["expressionMap()", "items", "price * 2"], [6, 4, 10]),
    (["expressionFilter()", "items", "price > 2"], [DATA["items"][0], DATA["items"][2]]),
    (["expressionFind()", "items", "name === 'a'"], DATA["items"][1]),
    (["expressionSort()", "items", "name"], [DATA["items"][1], DATA["items"][0], DATA["items"][2]]),
    (["expressionSort()", "items", "price", "desc"], [DATA["items"][2], DATA["items"][0], DATA["items"][1]]),
    (["expressionReduce()", "items", "0", "$previous + price"], 10),
    ("expressionGroup(items, 'kind').x.length", 2),
    ("expressionMax(items, 'price')", 5), ("expressionMin(items, 'price')", 2),
    ("unique([1, 1, 2])", [1, 2]), ("merge({a: 1}, {b: 2})", {"a": 1, "b": 2}),
    ("pathPattern('/x/$>0/${title}')", "/x/s/T"), ("path('a.b', literal({a: {b: 3}}))", 3),
    ("propsToList(obj)", [{"v": 1, "$key": "k1"}, {"v": 2, "$key": "k2"}]),
    ("objectEntries(obj)[0][0]", "k1"), ("parseInt('42px')", 42), ("parseInt('ff', 16)", 255),
    ("parseFloat('3.5e1x')", 35), ("parseJson('{\"a\":1}').a", 1), ("uuid().length", 36),
    ("encodeURIComponent('a b/c')", "a%20b%2Fc"), ("regexp('^a').test('abc')", True),
    ("'a1b2'.replace(regexp('[0-9]', 'g'), '')", "ab"), ("stripHtml('<p>x &amp; y</p>')", "x & y"),
    ("formatDate(newDate('2024-03-05T06:07:08Z'), 'YYYY-MM-DD HH:mm:ss')", "2024-03-05 06:07:08"),
    ("Math.abs(-2)", 2),
])
def test_helpers(spec: Any, expected: Any) -> None:
    assert t(spec) == expected


def test_dates() -> None:
    assert format_date(new_date(0), "YYYY") == "1970"
    assert format_date(new_date(2024, 0, 2), "D/M/YY [at] H") == "2/1/24 at 0"


def test_errors_and_budget() -> None:
    with pytest.raises(ExpressionError, match="nope"):
        t({"x": "nope.y"})
    with pytest.raises(BudgetExceeded):
        transform(["expressionMap()", "items", "'x'.repeat(100000)"], DATA,
                  TransformContext(budget=Budget(max_size=1000)))
