"""JSON codec for every command and event: msgspec tagged unions, the `type` field names the version."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from events import upcast
from events.files import FileEvent
from events.jobs import JobCommand, JobEvent
from events.pipelines import PipelineCommand, PipelineEvent, RunCommand
from events.services import ServiceCommand, ServiceEvent
from events.tasks import TaskEvent
from events.works import WorkCommand, WorkEvent

AnyEvent = JobEvent | FileEvent | ServiceEvent | TaskEvent | WorkEvent | PipelineEvent
AnyCommand = JobCommand | ServiceCommand | WorkCommand | PipelineCommand | RunCommand

_encoder = msgspec.json.Encoder()
_event_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(AnyEvent)
_command_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(AnyCommand)


class DecodeError(ValueError):
    """A message that is not a valid command or event; it goes to the dead-letter topic."""

    retryable = False


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode_event(raw: bytes) -> Any:
    """The current version of an event, whatever version the log holds (events/upcast.py)."""
    try:
        return _event_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise DecodeError(str(exc)) from exc
        if not isinstance(message, dict) or message.get("type") not in upcast.EVENT_UPCASTERS:
            raise DecodeError(str(exc)) from exc
        try:
            return msgspec.convert(upcast.upcast(message), AnyEvent, strict=False)
        except (msgspec.ValidationError, KeyError, ValueError) as again:
            raise DecodeError(f"old event could not be upcast: {again}") from exc
    except msgspec.DecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from exc


def decode_command(raw: bytes) -> Any:
    try:
        return _command_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise DecodeError(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from exc


def decode_command_of(raw: bytes, kinds: Any) -> Any:
    """A command of one of `kinds` (a union): a command meant for another stream is refused too."""
    command = decode_command(raw)
    if not isinstance(command, kinds):
        raise DecodeError(f"{command.__struct_config__.tag} does not belong on this topic")
    return command


def decode_work_command(raw: bytes) -> Any:
    return decode_command_of(raw, WorkCommand)
