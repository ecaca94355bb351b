"""Splitters and joiners: one message into many (split, unzip, jsonSplit) and many into one
(multipart, zip, jsonObject). Parts are named by `Content-Disposition: form-data; name="..."`."""

from __future__ import annotations

import base64
import io
import uuid
import zipfile
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import orjson

from services.pipelines.errors import LimitExceeded, PipelineError
from services.pipelines.messages import Message, name_from_disposition


class PartsError(PipelineError):
    """A message that a splitter cannot split (wrong type or malformed)."""

    status = 400


def _part(parent: Message, name: str, body: bytes, content_type: str) -> Message:
    headers = {"content-type": content_type, "content-disposition": f'form-data; name="{name}"'}
    return Message(status=parent.status, headers=headers, body=body, name=name, method=parent.method)


def json_split(message: Message, max_parts: int) -> list[Message]:
    if message.null:
        return [message]
    value: Any
    if message.content_type in ("application/x-ndjson", "application/ndjson", "application/jsonl"):
        lines = [line for line in message.body.splitlines() if line.strip()]
        value = [orjson.loads(line) for line in lines]
    else:
        value = message.json()
    if isinstance(value, list):
        items = [(str(i), v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        raise PartsError(f"jsonSplit needs a JSON list or object, not {type(value).__name__}")
    if len(items) > max_parts:
        raise LimitExceeded(f"jsonSplit would make {len(items)} messages; the fan-out limit is {max_parts}")
    if not items:
        return [Message(name=message.name, null=True, method=message.method)]
    return [_part(message, k, orjson.dumps(v), "application/json") for k, v in items]


def split_multipart(message: Message, max_parts: int) -> list[Message]:
    if message.content_type != "multipart/form-data":
        raise PartsError(f"split needs multipart/form-data, not {message.content_type or 'no content type'}")
    head = f"Content-Type: {message.headers['content-type']}\r\n\r\n".encode()
    parsed = BytesParser(policy=HTTP).parsebytes(head + message.body)
    if not parsed.is_multipart():
        raise PartsError("the multipart body could not be read")
    out: list[Message] = []
    for i, part in enumerate(parsed.iter_parts()):
        name = name_from_disposition(str(part.get("content-disposition", ""))) or str(i)
        payload = part.get_payload(decode=True)
        body = payload if isinstance(payload, bytes) else b""
        out.append(_part(message, name, body, part.get_content_type() if part.get("content-type") else "text/plain"))
        if len(out) > max_parts:
            raise LimitExceeded(f"split would make more than {max_parts} messages (the fan-out limit)")
    return out


def unzip(message: Message, max_parts: int, max_bytes: int) -> list[Message]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(message.body))
    except zipfile.BadZipFile as exc:
        raise PartsError(f"unzip needs a zip archive: {exc}") from None
    infos = [i for i in archive.infolist() if not i.is_dir()]
    if len(infos) > max_parts:
        raise LimitExceeded(f"unzip would make {len(infos)} messages; the fan-out limit is {max_parts}")
    if sum(i.file_size for i in infos) > max_bytes:
        raise LimitExceeded(f"the archive unpacks to more than {max_bytes} bytes")
    return [_part(message, i.filename, archive.read(i), _guess_type(i.filename)) for i in infos]


def _guess_type(name: str) -> str:
    import mimetypes

    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1] if "." in name else name


def json_object(messages: list[Message]) -> Message:
    out: dict[str, Any] = {}
    for m in messages:
        if m.null:
            if not m.name:
                continue  # the lone null message of an empty fan-out joins to {}
            value: Any = {}
        elif m.is_json:
            value = m.json()
        elif m.is_text:
            value = m.text()
        else:
            value = base64.b64encode(m.body).decode()
        if m.name == "$this" and isinstance(value, dict):
            out.update(value)
        else:
            out[_short(m.name)] = value
    if out and all(k.isdigit() for k in out):
        out["length"] = len(out)
    return Message(headers={"content-type": "application/json"}, body=orjson.dumps(out))


def multipart(messages: list[Message]) -> Message:
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for m in messages:
        body = b"{}" if m.null else m.body
        ctype = "application/json" if m.null else (m.headers.get("content-type") or "application/octet-stream")
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{_short(m.name)}"\r\n'
                      f"Content-Type: {ctype}\r\n\r\n".encode() + body + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return Message(headers={"content-type": f"multipart/form-data; boundary={boundary}"}, body=b"".join(chunks))


def zip_parts(messages: list[Message]) -> Message:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, m in enumerate(messages):
            archive.writestr(m.name or str(i), b"{}" if m.null else m.body)
    return Message(headers={"content-type": "application/zip"}, body=buffer.getvalue())


def join(kind: str, messages: list[Message]) -> Message:
    if kind == "jsonObject":
        return json_object(messages)
    if kind == "multipart":
        return multipart(messages)
    return zip_parts(messages)


def split(kind: str, message: Message, max_parts: int, max_bytes: int) -> list[Message]:
    if kind == "jsonSplit":
        return json_split(message, max_parts)
    if kind == "split":
        return split_multipart(message, max_parts)
    return unzip(message, max_parts, max_bytes)
