"""JSON codec for every command and event: msgspec tagged unions, the `type` field names the version."""

from __future__ import annotations

from typing import Any

import msgspec

from events.files import FileEvent
from events.jobs import JobCommand, JobEvent

AnyEvent = JobEvent | FileEvent
AnyCommand = JobCommand

_encoder = msgspec.json.Encoder()
_event_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(AnyEvent)
_command_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(AnyCommand)


class DecodeError(ValueError):
    """A message that is not a valid command or event; it goes to the dead-letter topic."""

    retryable = False


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode_event(raw: bytes) -> Any:
    try:
        return _event_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise DecodeError(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from exc


def decode_command(raw: bytes) -> Any:
    try:
        return _command_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise DecodeError(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from exc
