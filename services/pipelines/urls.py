"""URL patterns: the `$` macros of a step's URL, resolved against the caller's URL and the message.

    resolve("/json/orders/${orderId}", context, body={"orderId": 7})  # -> ["/json/orders/7"]

`$*` service path (+ query), `$>n` / `$<n` a segment from the start / end, `$>a<b` a slice, the same
with `B` (base path), `P` (full path), `N` (message name) or `S` in front, `$N*`, `$P*`, `$B*`,
`$>2:(default)`, `$?(key)`, `$?*`, `$METHOD`; `${path}` a JSON path in the body (`${}` the whole
body, `${list[]}` one URL per element, several give their Cartesian product), `${$var}` a variable.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from services.pipelines.errors import PipelineError

_SEGMENTS = re.compile(r"\$([BSNP])?([<>]\d+)([<>]\d+)?(?::\(([^)]*)\))?")
_QUERY = re.compile(r"\$\?(\*|\(([^)]+)\))")
_BODY = re.compile(r"\$\{([^}]*)\}")
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d*)\]|\[([^\]]+)\]")


class PatternError(PipelineError):
    """A `${...}` names nothing in the message: the step fails with 500."""

    status = 500


@dataclass(frozen=True)
class UrlContext:
    """The caller's URL as the macros see it."""

    method: str = "GET"
    base_path: str = ""  # where the pipeline is mounted, e.g. "/p/orders"
    service_path: str = ""  # the rest, e.g. "/123/456"
    query: tuple[tuple[str, str], ...] = ()
    variables: dict[str, Any] = field(default_factory=dict)

    def segments(self, section: str | None, name: str) -> list[str]:
        def parts(path: str) -> list[str]:
            return [p for p in path.split("/") if p]

        if section == "B":
            return parts(self.base_path)
        if section == "P":
            return parts(self.base_path) + parts(self.service_path)
        if section == "N":
            return parts(name)
        return parts(self.service_path)

    def query_string(self) -> str:
        return "&".join(f"{quote(k)}={quote(v)}" if v else quote(k) for k, v in self.query)


def _position(text: str, count: int) -> int:
    n = int(text[1:])
    return n if text[0] == ">" else count - 1 - n


def resolve_macros(pattern: str, ctx: UrlContext, name: str = "") -> str:
    """Every macro except `${...}`."""
    if "$" not in pattern:
        return pattern
    query = ctx.query_string()
    full_query = f"?{query}" if query else ""
    out = pattern.replace("$METHOD", ctx.method)
    out = out.replace("$*", ctx.service_path.strip("/") + full_query)
    out = out.replace("$P*", "/".join(ctx.segments("P", name)) + full_query)
    out = out.replace("$B*", "/".join(ctx.segments("B", name)))
    out = out.replace("$N*", name)

    def segments(m: re.Match[str]) -> str:
        section, first, second, default = m.group(1), m.group(2), m.group(3), m.group(4)
        parts = ctx.segments(section, name)
        start = _position(first, len(parts))
        if second:
            end = _position(second, len(parts))
            value = "/".join(parts[max(start, 0) : end + 1])
        else:
            value = parts[start] if 0 <= start < len(parts) else ""
        return value or (default or "")

    out = _SEGMENTS.sub(segments, out)

    def query_value(m: re.Match[str]) -> str:
        if m.group(1) == "*":
            return query
        return ",".join(quote(v) for k, v in ctx.query if k == m.group(2))

    return _QUERY.sub(query_value, out)


def json_path(value: Any, path: str, variables: dict[str, Any] | None = None) -> list[Any]:
    """Values at `path`: one, or one per element where the path has `[]`. Missing gives []."""
    path = path.strip()
    current: list[Any] = [value]
    if path.startswith("$") and len(path) > 1 and path[1] not in ".[":
        var, _, rest = path[1:].partition(".")
        var_name, bracket, after = var.partition("[")
        current = [(variables or {}).get("$" + var_name)]
        path = (bracket + after + ("." + rest if rest else "")) if bracket else rest
    elif path.startswith("$"):
        path = path[1:].lstrip(".")
    for m in _PATH_PART.finditer(path):
        key, index, other = m.group(1), m.group(2), m.group(3)
        nxt: list[Any] = []
        for v in current:
            if key is not None:
                if isinstance(v, dict) and key in v:
                    nxt.append(v[key])
                elif isinstance(v, list) and key.isdigit() and int(key) < len(v):
                    nxt.append(v[int(key)])
            elif index == "":
                if isinstance(v, list):
                    nxt.extend(v)
                elif isinstance(v, dict):
                    nxt.extend(v.values())
            elif index is not None:
                if isinstance(v, list) and int(index) < len(v):
                    nxt.append(v[int(index)])
                elif isinstance(v, dict) and index in v:
                    nxt.append(v[index])
            elif other is not None:
                k = other.strip("'\"")
                if isinstance(v, dict) and k in v:
                    nxt.append(v[k])
        current = nxt
    return current


def _fans_out(path: str) -> bool:
    return "[]" in path


def _text(value: Any, pattern: str, path: str) -> str:
    if value is None:
        raise PatternError(f"in URL pattern {pattern!r}, ${{{path}}} is not present in the message")
    if isinstance(value, dict | list):
        raise PatternError(f"in URL pattern {pattern!r}, ${{{path}}} is an object, not a value")
    if value is True or value is False:
        return "true" if value else "false"
    text = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    if text == "":
        raise PatternError(f"in URL pattern {pattern!r}, ${{{path}}} is an empty string")
    return quote(text, safe="/:@-._~!$&'()*+,;=")


def resolve(pattern: str, ctx: UrlContext, name: str = "", body: Any = None) -> list[str]:
    """The URLs of a step: usually one; `${list[]}` gives one per element, possibly none."""
    base = resolve_macros(pattern, ctx, name)
    paths = _BODY.findall(base)
    if not paths:
        return [base]
    choices: list[list[str]] = []
    for path in paths:
        if path.strip() == "":
            values = [body]
        else:
            values = json_path(body, path, ctx.variables)
        if _fans_out(path):
            choices.append([_text(v, pattern, path) for v in values])
        else:
            if not values:
                raise PatternError(f"in URL pattern {pattern!r}, ${{{path}}} is not present in the message")
            choices.append([_text(values[0], pattern, path)])
    urls = []
    for combo in itertools.product(*choices):
        pieces = base.split("${")
        out = pieces[0]
        for value, piece in zip(combo, pieces[1:], strict=True):
            out += value + piece.split("}", 1)[1]
        urls.append(out)
    return urls


def normalise(url: str) -> str:
    """Collapse the double slashes an empty macro leaves (keeping the scheme's)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return re.sub(r"/{2,}", "/", url)
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host}{re.sub(r'/{2,}', '/', slash + path)}"
