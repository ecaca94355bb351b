"""add_task's arguments against a service's declaration: count and types, errors name the argument."""

from __future__ import annotations

import base64

import pytest

from events.services import Argument
from services.proxy.arguments import ArgumentError, FileArg, check, is_image

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
DECLARED = [
    Argument(argument_name="image", type="image"),
    Argument(argument_name="width", type="int"),
    Argument(argument_name="scale", type="float"),
    Argument(argument_name="label", type="str"),
    Argument(argument_name="flip", type="bool"),
    Argument(argument_name="options", type="json"),
    Argument(argument_name="attachment", type="file"),
]
FILE_ID = "01a20f3a-73da-7066-871d-dae364a1d4fe"


def good() -> list[object]:
    return [base64.b64encode(PNG).decode(), 64, 1, "x", True, {"a": [1]}, FILE_ID]


def test_every_type_accepted_and_converted() -> None:
    image, width, scale, label, flip, options, attachment = check(DECLARED, good())
    assert image == FileArg(data=PNG, text=base64.b64encode(PNG).decode())
    assert (width, scale, label, flip, options) == (64, 1.0, "x", True, {"a": [1]})
    assert isinstance(scale, float)
    assert attachment == FileArg(file_id=FILE_ID)


def test_files_in_object_form_and_data_urls() -> None:
    declared = [Argument(argument_name="a", type="file"), Argument(argument_name="b", type="image"),
                Argument(argument_name="c", type="file")]
    a, b, c = check(declared, [{"file_id": FILE_ID}, "data:image/png;base64," + base64.b64encode(PNG).decode(),
                               {"data": base64.encodebytes(b"x" * 100).decode()}])
    assert a == FileArg(file_id=FILE_ID) and isinstance(b, FileArg) and b.data == PNG
    assert isinstance(c, FileArg) and c.data == b"x" * 100  # line-wrapped base64 is fine


def test_count_mismatch_lists_the_names() -> None:
    with pytest.raises(ArgumentError, match=r"expected 7 argument\(s\) \(image, width, .*\), got 2"):
        check(DECLARED, [1, 2])
    with pytest.raises(ArgumentError, match="args must be an array"):
        check(DECLARED, {"image": 1})


@pytest.mark.parametrize(("index", "value", "message"), [
    (1, True, "argument 1 ('width') must be an integer, got a boolean"),
    (1, 1.5, "argument 1 ('width') must be an integer, got a number"),
    (2, "1", "argument 2 ('scale') must be a number, got a string"),
    (3, None, "argument 3 ('label') must be a string, got null"),
    (4, 1, "argument 4 ('flip') must be true or false, got a number"),
    (0, "not base64!", "argument 0 ('image') must be an image"),
    (0, base64.b64encode(b"plain text").decode(), "argument 0 ('image') is not an image"),
    (6, 12, "argument 6 ('attachment') must be a file id or base64 data, got a number"),
    (6, {"file_id": "nope"}, "argument 6 ('attachment') must be a file id or base64 data, got an object"),
])
def test_a_mismatch_names_the_argument(index: int, value: object, message: str) -> None:
    args = good()
    args[index] = value
    with pytest.raises(ArgumentError) as caught:
        check(DECLARED, args)
    assert str(caught.value).startswith(message)
    assert caught.value.name == DECLARED[index].argument_name


def test_image_signatures() -> None:
    assert is_image(PNG) and is_image(b"\xff\xd8\xff\xe0") and is_image(b"GIF89a") and is_image(b"RIFF1234WEBPVP8 ")
    assert not is_image(b"%PDF-1.7")
