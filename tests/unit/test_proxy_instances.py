"""Reading an instance's /me, normalizing its URL, and what its answers mean for a task."""

from __future__ import annotations

import orjson
import pytest

from events.services import Argument
from services.proxy.instances import InvalidDescription, normalize_url, outcome_of, parse_me
from services.proxy.tasks import Answered, Errored

SEED_ME = {
    "name": "service_name",
    "description": "some description",
    "input": [
        {"argument_name": "argument_name", "argument_description": "description", "type": "image"},
        {"argument_name": "argument_name2", "argument_description": "description", "type": "int"},
    ],
}


def test_the_seeds_me_document_parses_with_defaults() -> None:
    description = parse_me(orjson.dumps(SEED_ME))
    assert description.name == "service_name" and description.task_path == "/run"
    assert description.max_concurrency is None
    assert description.arguments[1] == Argument(argument_name="argument_name2", argument_description="description",
                                                type="int")


@pytest.mark.parametrize(("change", "message"), [
    ({"name": ""}, "name must be a non-empty string"),
    ({"input": [{"argument_name": "a", "type": "tensor"}]}, "type must be one of"),
    ({"input": [{"argument_name": "a", "type": "int"}, {"argument_name": "a", "type": "str"}]}, "share a name"),
    ({"task_path": "run"}, "task_path must be a path"),
    ({"max_concurrency": 0}, "max_concurrency must be an integer"),
    ({"input": "image"}, "input must be an array"),
])
def test_bad_me_documents_say_what_is_wrong(change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidDescription, match=message):
        parse_me(orjson.dumps({**SEED_ME, **change}))
    with pytest.raises(InvalidDescription, match="not answer JSON"):
        parse_me(b"<html>")


def test_urls_are_normalized_and_checked() -> None:
    assert normalize_url("HTTP://LocalHost:8101/") == "http://localhost:8101"
    assert normalize_url("https://svc.example/base/") == "https://svc.example/base"
    assert normalize_url("http://127.0.0.1:1", ("127.0.0.1",)) == "http://127.0.0.1:1"
    for bad in ("ftp://x", "http://", "http://x:99999", "http://x/?q=1", 12, "http://u:p@x"):
        with pytest.raises(ValueError):
            normalize_url(bad)
    with pytest.raises(ValueError, match="not one of the allowed hosts"):
        normalize_url("http://10.0.0.1:80", ("127.0.0.1", "localhost"))


def test_what_an_answer_means() -> None:
    assert outcome_of("i", 200, b'{"a": 1}') == Answered("i", b'{"a": 1}')
    assert outcome_of("i", 200, b"not json") == Errored("i", "instance answered 200 with a body that is not JSON")
    refused = outcome_of("i", 400, b'{"error": "bad image"}')
    assert isinstance(refused, Errored) and not refused.retryable and "bad image" in refused.error
    for status in (500, 503, 429, 408):
        outcome = outcome_of("i", status, b"oops")
        assert isinstance(outcome, Errored) and outcome.retryable
