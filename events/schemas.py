"""Writes schemas/: one JSON Schema per command and event type, generated from events/.

    python -m events.schemas          # regenerate
    python -m events.schemas --check  # fail if schemas/ differs from the code (run by the tests)
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

import msgspec
import orjson

from events import codec

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def _members(union: object) -> list[type[msgspec.Struct]]:
    return list(typing.get_args(union))


def documents() -> dict[str, bytes]:
    """File name -> JSON Schema of every type on the wire, keyed by its tag ("job.run.v1.json")."""
    out: dict[str, bytes] = {}
    for kind, union in (("command", codec.AnyCommand), ("event", codec.AnyEvent)):
        for struct in _members(union):
            tag = struct.__struct_config__.tag
            schema = msgspec.json.schema(struct)
            schema["title"] = tag
            schema["description"] = f"{kind} {tag}: " + (struct.__doc__ or struct.__name__).strip().splitlines()[0]
            out[f"{tag}.json"] = orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    return out


def main() -> int:
    wanted = documents()
    if "--check" in sys.argv:
        have = {p.name: p.read_bytes() for p in SCHEMAS.glob("*.json")}
        if have != wanted:
            stale = sorted(set(have) ^ set(wanted) | {k for k in wanted if have.get(k) != wanted[k]})
            print(f"schemas/ is out of date ({', '.join(stale)}): run `make schemas`", file=sys.stderr)
            return 1
        return 0
    SCHEMAS.mkdir(exist_ok=True)
    for old in {p.name for p in SCHEMAS.glob("*.json")} - set(wanted):
        (SCHEMAS / old).unlink()
    for name, body in wanted.items():
        (SCHEMAS / name).write_bytes(body)
    print(f"wrote {len(wanted)} schemas to {SCHEMAS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
