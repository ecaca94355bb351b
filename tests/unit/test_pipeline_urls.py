"""URL patterns: every macro."""

from __future__ import annotations

import pytest

from services.pipelines.urls import PatternError, UrlContext, json_path, normalise, resolve

CTX = UrlContext("PUT", "/p/pipe", "/a/b/c", (("k", "v"), ("k", "w"), ("z", "")), {"$var": {"id": 9}})


@pytest.mark.parametrize("pattern,expected", [
    ("/x/$*", "/x/a/b/c?k=v&k=w&z"), ("/x/$>0", "/x/a"), ("/x/$>1", "/x/b"), ("/x/$<0", "/x/c"),
    ("/x/$<1", "/x/b"), ("/x/$>1<0", "/x/b/c"), ("/x/$>0<1", "/x/a/b"), ("/x/$>5:(none)", "/x/none"),
    ("/x/$>5", "/x/"), ("/x/$B*", "/x/p/pipe"), ("/x/$B>1", "/x/pipe"), ("/x/$P*", "/x/p/pipe/a/b/c?k=v&k=w&z"),
    ("/x/$P<0", "/x/c"), ("/x/$N*", "/x/nm"), ("/x/$?(k)", "/x/v,w"), ("/x?$?*", "/x?k=v&k=w&z"),
    ("/$METHOD", "/PUT"), ("/x/${$var.id}", "/x/9"), ("/x/${}", "/x/5"),
])
def test_macros(pattern: str, expected: str) -> None:
    body = 5 if "${}" in pattern else {"id": 1}
    assert resolve(pattern, CTX, "nm", body) == [expected]


def test_body_paths_and_products() -> None:
    body = {"a": {"b": 2}, "xs": [1, 2], "ys": ["p", "q"], "e": []}
    assert resolve("/${a.b}", CTX, "", body) == ["/2"]
    assert resolve("/${xs[1]}", CTX, "", body) == ["/2"]
    assert resolve("/${xs[]}/${ys[]}", CTX, "", body) == ["/1/p", "/1/q", "/2/p", "/2/q"]
    assert resolve("/${e[]}", CTX, "", body) == []
    with pytest.raises(PatternError, match="not present"):
        resolve("/${nope}", CTX, "", body)
    with pytest.raises(PatternError, match="is an object"):
        resolve("/${a}", CTX, "", body)


def test_json_path_and_normalise() -> None:
    assert json_path({"a": [{"b": 1}, {"b": 2}]}, "a[].b") == [1, 2]
    assert json_path({"a": {"x y": 1}}, "a['x y']") == [1]
    assert normalise("http://h//a//b") == "http://h/a/b" and normalise("/a//b/") == "/a/b/"
