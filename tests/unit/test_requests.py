"""Request parsing rules that need no server: tokens and the trailing-comma leniency."""

from __future__ import annotations

import pytest

from services.api.requests import _TRAILING_COMMA
from services.config import ConfigError, User, parse_tokens


def relax(text: str) -> str:
    return _TRAILING_COMMA.sub(lambda m: m.group(1) or m.group(2), text)


def test_trailing_commas_are_dropped_outside_strings() -> None:
    assert relax('{\n    "command": "uname -a | wc -l",\n}') == '{\n    "command": "uname -a | wc -l"\n}'
    assert relax('{"a": [1, 2,], "b": ",}",}') == '{"a": [1, 2], "b": ",}"}'
    assert relax('{"a": "x\\",}"}') == '{"a": "x\\",}"}'


def test_tokens_parse() -> None:
    assert parse_tokens("t1=alice, t2=root:admin\n# comment\n") == {
        "t1": User("alice", "user"),
        "t2": User("root", "admin"),
    }
    with pytest.raises(ConfigError):
        parse_tokens("t1=alice:wizard")
    with pytest.raises(ConfigError):
        parse_tokens("justatoken")
