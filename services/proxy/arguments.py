"""Checking add_task's `args` against a service's declared arguments. Pure.

    int    a JSON integer (not a boolean)          float  a JSON number
    str    a JSON string                           bool   true or false
    json   any JSON value
    image  a file id of the data manager, or base64 data (a `data:` URL prefix is allowed) whose
           bytes start like a PNG, JPEG, GIF, WebP, BMP or TIFF file
    file   a file id, or base64 data
An image or file may also be given as {"file_id": "..."} or {"data": "<base64>"}.
"""

from __future__ import annotations

import binascii
import math
import uuid
from dataclasses import dataclass
from typing import Any

from events.services import Argument

_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


class ArgumentError(ValueError):
    """An argument does not match its declaration; the message names it."""

    retryable = False

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class FileArg:
    """An image or file argument: a stored file, or bytes given inline (with their base64 text)."""

    file_id: str | None = None
    data: bytes | None = None
    text: str | None = None  # the base64 the caller sent, reused when the bytes stay inline


def is_image(data: bytes) -> bool:
    return data.startswith(_IMAGE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def check(declared: list[Argument], args: Any) -> list[Any]:
    """The arguments in order, each converted to its type (FileArg for images and files)."""
    if not isinstance(args, list):
        raise ArgumentError("args must be an array")
    if len(args) != len(declared):
        names = ", ".join(a.argument_name for a in declared) or "none"
        raise ArgumentError(f"expected {len(declared)} argument(s) ({names}), got {len(args)}")
    return [_one(spec, value, i) for i, (spec, value) in enumerate(zip(declared, args, strict=True))]


def _one(spec: Argument, value: Any, index: int) -> Any:
    name, kind = spec.argument_name, spec.type

    def wrong(expected: str) -> ArgumentError:
        return ArgumentError(f"argument {index} ({name!r}) must be {expected}, got {_describe(value)}", name)

    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise wrong("a number")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind == "json":
        return value
    if kind in ("image", "file"):
        arg = _file_arg(value)
        if arg is None:
            raise wrong(f"an {kind} (a file id or base64 data)" if kind == "image" else "a file id or base64 data")
        if kind == "image" and arg.data is not None and not is_image(arg.data):
            raise ArgumentError(
                f"argument {index} ({name!r}) is not an image: expected PNG, JPEG, GIF, WebP, BMP or TIFF data", name
            )
        return arg
    raise ArgumentError(f"argument {index} ({name!r}) has an unknown declared type {kind!r}", name)


def _file_arg(value: Any) -> FileArg | None:
    if isinstance(value, dict) and len(value) == 1:
        (key, inner), = value.items()
        if key == "file_id":
            return FileArg(file_id=_uuid(inner)) if _uuid(inner) else None
        if key == "data":
            return _base64(inner)
        return None
    if not isinstance(value, str):
        return None
    file_id = _uuid(value)
    return FileArg(file_id=file_id) if file_id else _base64(value)


def _uuid(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) != 36:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _base64(value: Any) -> FileArg | None:
    if not isinstance(value, str) or not value:
        return None
    text = value
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            return None
    if any(c.isspace() for c in text[:200]) or any(c.isspace() for c in text[-200:]):
        text = "".join(text.split())  # line-wrapped base64 (76 columns, as MIME writes it)
    try:
        data = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    return FileArg(data=data, text=text) if data else None


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
