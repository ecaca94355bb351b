"""Tokens and messages on the wire (events/pipelines.py) and back, with large bodies by reference.

A body over `inline_limit` bytes is written to the blob store and travels as a `file_id` with its
`file.stored` event (the data manager's), never inline in Kafka. A body already stored is not
stored again when the same bytes travel on (a fork sends one message to many branches).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from events.base import new_id, utcnow
from events.files import FileStored
from events.pipelines import Body, Frame
from events.pipelines import Token as WireToken
from services.blobs import LocalBlobStore
from services.pipelines.flow import Token
from services.pipelines.messages import Message


class BodyGone(RuntimeError):
    """A body stored by reference is no longer in the blob store."""

    retryable = False


Publish = Callable[[FileStored], Awaitable[None]]


class Bodies:
    """Moves message bodies between the wire and memory for one process."""

    def __init__(self, blobs: LocalBlobStore, inline_limit: int, publish: Publish | None = None) -> None:
        self.blobs = blobs
        self.inline_limit = inline_limit
        self.publish = publish
        self.stored: OrderedDict[tuple[int, int], str] = OrderedDict()  # (size, hash) of stored bytes -> file id

    async def to_wire(self, m: Message, owner: str, label: str) -> Body:
        data: bytes | None = m.body
        file_id: str | None = None
        if len(m.body) > self.inline_limit:
            file_id = await self.store(m.body, m.content_type or "application/octet-stream", owner, label)
            data = None
        return Body(status=m.status, headers=m.headers, data=data or None, file_id=file_id, size=len(m.body),
                    name=m.name, null=m.null, method=m.method)

    async def store(self, body: bytes, content_type: str, owner: str, label: str) -> str:
        key = (len(body), hash(body))
        known = self.stored.get(key)
        if known is not None:
            return known
        file_id = new_id()
        size, sha256 = await asyncio.to_thread(self.blobs.put_bytes, file_id, body)
        if self.publish is not None:
            await self.publish(FileStored(event_id=new_id(), stream_id=file_id, sequence=1, occurred_at=utcnow(),
                                          correlation_id=label, actor="skyjobs-pipelines", owner_id=owner,
                                          name=f"{label}.body", size=size, sha256=sha256, content_type=content_type))
        self._remember(key, file_id)
        return file_id

    def _remember(self, key: tuple[int, int], file_id: str) -> None:
        self.stored[key] = file_id
        self.stored.move_to_end(key)
        while len(self.stored) > 1000:
            self.stored.popitem(last=False)

    async def from_wire(self, body: Body) -> Message:
        data = body.data or b""
        if body.file_id is not None:
            path = self.blobs.path(body.file_id)
            if path is None:
                raise BodyGone(f"the body stored as file {body.file_id} is gone")
            data = await asyncio.to_thread(path.read_bytes)
            self._remember((len(data), hash(data)), body.file_id)
        return Message(status=body.status, headers=dict(body.headers), body=data, name=body.name, null=body.null,
                       method=body.method)

    async def token_to_wire(self, t: Token, base: dict[str, Any], owner: str) -> WireToken:
        """`base`: the run's fields (pipeline, spec, caller, deadline, route)."""
        frames = []
        for f in t.frames:
            if isinstance(f.original, Message):
                f = msgspec.structs.replace(f, original=await self.to_wire(f.original, owner, base["label"]))
            frames.append(f)
        fields = {k: v for k, v in base.items() if k != "label"}
        pending, pending_conditional = t.pending or (None, False)
        return WireToken(token_id=t.token_id, frames=frames,
                         message=await self.to_wire(t.message, owner, base["label"]),
                         variables={k: v for k, v in t.variables.items() if k not in ("$_user", "$_headers")},
                         budget=t.budget, tracked=t.tracked, order=list(t.order), pending=pending,
                         pending_conditional=pending_conditional, **fields)

    async def token_from_wire(self, w: WireToken, user: Any, headers: dict[str, str]) -> Token:
        frames: list[Frame] = []
        for f in w.frames:
            if f.original is not None:
                original = msgspec.convert(f.original, Body)
                f = msgspec.structs.replace(f, original=await self.from_wire(original))
            frames.append(f)
        variables = dict(w.variables)
        variables.setdefault("$_user", user)
        variables.setdefault("$_headers", dict(headers))
        return Token(w.token_id, frames, await self.from_wire(w.message), variables, w.budget, w.tracked,
                     tuple(w.order), (w.pending, w.pending_conditional) if w.pending else None)
