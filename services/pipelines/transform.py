"""Transformations: a JSON object whose string values are expressions over the input JSON.

    transform({"total": "price * qty", "items[i]": "i.value.id"}, {"price": 2, "qty": 3, ...}, ctx)

Keys: `$`/`$this`/`.` give the base object; `$x` sets a pipeline variable; `$$x` outputs the key
`$x`; path keys `a.b`, `a[0]`, `a[item]` (loop; `item` is {value, index}), `a{prop}` (loop over
entries). An undefined result removes the property. `["fn()", args...]` calls a helper. Pure apart
from the clock and uuid helpers; every evaluation shares one Budget.
"""

from __future__ import annotations

import base64
import html
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson

from services.pipelines import expressions
from services.pipelines.errors import ExpressionError
from services.pipelines.expressions import GLOBAL_MARK, UNDEFINED, Budget, JsFunction, plain, to_num, to_str
from services.pipelines.urls import UrlContext, json_path, resolve


@dataclass
class TransformContext:
    url: UrlContext = field(default_factory=UrlContext)
    name: str = ""
    variables: dict[str, Any] = field(default_factory=dict)
    budget: Budget = field(default_factory=Budget)


def transform(spec: Any, data: Any, ctx: TransformContext) -> Any:
    """Apply a transformation; ExpressionError (400) naming the expression when one fails."""
    ctx.budget.start()
    return plain(_Transformer(ctx).apply(spec, data))


class _Transformer:
    def __init__(self, ctx: TransformContext) -> None:
        self.ctx = ctx

    # names an expression sees: the input's properties, `$`/`$this`, variables, then helpers
    def scope(self, data: Any, extra: dict[str, Any] | None = None) -> Callable[[str], Any]:
        helpers = self.helpers(data)
        variables = self.ctx.variables

        def lookup(name: str) -> Any:
            if extra and name in extra:
                return extra[name]
            if name in ("$", "$this"):
                return data
            if isinstance(data, dict) and name in data:
                return data[name]
            if name.startswith("$") and name in variables:
                return variables[name]
            if name in helpers:
                return helpers[name]
            return expressions.BUILTINS.get(name, UNDEFINED)

        return lookup

    def evaluate(self, expr: str, data: Any, extra: dict[str, Any] | None = None) -> Any:
        return expressions.evaluate(expr, self.scope(data, extra), self.ctx.budget)

    def apply(self, spec: Any, data: Any) -> Any:
        self.ctx.budget.tick("transformation")
        if isinstance(data, list):
            data_for_names: Any = {**{str(i): v for i, v in enumerate(data)}, "length": len(data)}
            data_for_names["$list"] = data
        else:
            data_for_names = data
        if isinstance(spec, str):
            return self.evaluate(spec, data if isinstance(data, list) else data_for_names)
        if isinstance(spec, list):
            if spec and isinstance(spec[0], str) and spec[0].endswith("()"):
                return self.call_helper(spec, data)
            return [self.apply(item, data) for item in spec]
        if isinstance(spec, dict):
            out: Any = {}
            base_spec = spec.get("$", spec.get("$this", spec.get(".")))
            if base_spec is not None:
                base = self.apply(base_spec, data)
                out = dict(base) if isinstance(base, dict) else list(base) if isinstance(base, list) else base
            for key, sub in spec.items():
                if key in (".", "$this", "$"):
                    continue
                if key.startswith("$") and len(key) > 1 and not key.startswith("$$") and key != "$key":
                    self.ctx.variables[key] = self.apply(sub, data)
                    continue
                if not isinstance(out, dict | list):
                    out = {}
                self.assign(key[1:] if key.startswith("$$") else key, data, out, sub)
            return out
        return spec

    def call_helper(self, spec: list[Any], data: Any) -> Any:
        name = spec[0][:-2]
        helpers = self.helpers(data)
        fn = helpers.get(name)
        if not isinstance(fn, JsFunction):
            raise ExpressionError(spec[0], f"{name} is not a helper function")
        expression_args = _EXPRESSION_ARGS.get(name, ())
        args: list[Any] = []
        for i, arg in enumerate(spec[1:]):
            if isinstance(arg, str) and i not in expression_args:
                args.append(self.evaluate(arg, data))
            else:
                args.append(arg)
        return fn(*args)

    def assign(self, key: str, data: Any, output: Any, sub: Any) -> None:
        m = re.match(r"([^.\[{]*)([.\[{])?", key)
        assert m is not None
        head, sep = m.group(1).strip(), m.group(2)
        if sep is None:
            value = self.apply(sub, data)
            _set(output, head, value)
            return
        rest = key[m.end() :]
        if sep == ".":
            child = _get(output, head)
            child = dict(child) if isinstance(child, dict) else list(child) if isinstance(child, list) else {}
            _set(output, head, child)
            self.assign(rest, data, child, sub)
            return
        close = "]" if sep == "[" else "}"
        index_name, _, remaining = rest.partition(close)
        index_name = index_name.strip()
        remaining = remaining.lstrip(".")
        target = output
        if head:
            existing = _get(output, head)
            if existing is UNDEFINED or existing is None:
                existing = [] if sep == "[" else {}
            target = list(existing) if isinstance(existing, list) else dict(existing) if isinstance(existing, dict) else existing
            _set(output, head, target)

        def one(item_data: Any, index: int | str) -> None:
            if remaining:
                child = _get(target, index)
                child = dict(child) if isinstance(child, dict) else {}
                _set(target, index, child)
                self.assign(remaining, item_data, child, sub)
            else:
                _set(target, index, self.apply(sub, item_data))

        outer = data.get("outer", data) if isinstance(data, dict) else data
        if sep == "[" and index_name.isdigit():
            one(data, int(index_name))
        elif sep == "[":
            if isinstance(target, dict):  # a loop over an object's values makes a list of them
                items: list[Any] = list(target.values())
                target = []
                if head:
                    _set(output, head, target)
            else:
                items = list(target) if isinstance(target, list) else []
            for idx, item in enumerate(list(items)):
                self.ctx.budget.tick("transformation loop")
                item_data = {**(data if isinstance(data, dict) else {}), **(item if isinstance(item, dict) else {}),
                             "outer": outer, index_name: {"value": item, "index": idx}}
                one(item_data, idx)
            if not remaining and isinstance(target, list):
                target[:] = [x for x in target if x is not UNDEFINED]
        else:
            if not isinstance(target, dict):
                return
            for k, value in list(target.items()):
                self.ctx.budget.tick("transformation loop")
                item_data = {**(data if isinstance(data, dict) else {}), **(value if isinstance(value, dict) else {}),
                             "$key": k, "outer": outer, index_name: {"key": k, "value": value}}
                one(item_data, k)
            if not remaining:
                for k in [k for k, v in target.items() if v is UNDEFINED]:
                    del target[k]

    # --- helper functions ---------------------------------------------------------------------

    def helpers(self, data: Any) -> dict[str, Any]:
        budget = self.ctx.budget

        def each(items: Any) -> list[Any]:
            if items is None or items is UNDEFINED:
                return []
            if isinstance(items, dict):
                return list(items.values())
            if not isinstance(items, list):
                raise ExpressionError(to_str(items)[:60], "expected a list")
            budget.tick("helper", len(items))
            return items

        def with_data(extra: dict[str, Any] | None = None) -> dict[str, Any]:
            return {**(data if isinstance(data, dict) else {}), **(extra or {})}

        def item_eval(expr: str, item: Any, extra: dict[str, Any] | None = None) -> Any:
            names = with_data(extra)
            if isinstance(item, dict):
                names = {**names, **item}
            names["$"] = names["$this"] = item
            return expressions.evaluate(to_str(expr), self.scope(item, names), budget)

        def transform_map(items: Any, spec: Any) -> list[Any]:
            outer = data.get("outer", data) if isinstance(data, dict) else data
            return [self.apply(spec, {**item, "outer": outer} if isinstance(item, dict) else item) for item in each(items)]

        def sort(items: Any, expr: str, direction: str = "asc") -> list[Any]:
            keyed = [(item_eval(expr, x), i, x) for i, x in enumerate(each(items))]

            def key(t: tuple[Any, int, Any]) -> tuple[int, Any, int]:
                v = t[0]
                return (0, v, t[1]) if isinstance(v, int | float) and not isinstance(v, bool) else (1, to_str(v), t[1])

            out = [x for _, _, x in sorted(keyed, key=key)]
            return out[::-1] if direction == "desc" else out

        def group(items: Any, expr: str) -> dict[str, list[Any]]:
            groups: dict[str, list[Any]] = {}
            for x in each(items):
                groups.setdefault(to_str(item_eval(expr, x)), []).append(x)
            return groups

        def reduce(items: Any, init: Any, expr: str) -> Any:
            acc = init
            for x in each(items):
                acc = item_eval(expr, x, {"$previous": acc})
            return acc

        def unique(items: Any) -> list[Any]:
            out: list[Any] = []
            for x in each(items):
                if not any(expressions.strict_eq(x, y) or (isinstance(x, dict | list) and x == y) for y in out):
                    out.append(x)
            return out

        def merge(*objs: Any) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for o in objs:
                if isinstance(o, dict):
                    out.update(o)
            return out

        def path_pattern(pattern: Any, *_: Any) -> Any:
            urls = resolve(to_str(pattern), self.ctx.url, self.ctx.name, data)
            return urls[0] if len(urls) == 1 else urls

        def path(pattern: Any, value: Any, *_: Any) -> Any:
            found = json_path(value, path_pattern(pattern), self.ctx.variables)
            return found[0] if len(found) == 1 else (UNDEFINED if not found else found)

        def props_to_list(obj: Any, key_prop: Any = "$key") -> list[Any]:
            if not isinstance(obj, dict):
                return []
            key_name = to_str(key_prop) if key_prop is not UNDEFINED else "$key"
            return [{**v, key_name: k} if isinstance(v, dict) else v for k, v in obj.items()]

        def parse_int(s: Any, radix: Any = 10) -> Any:
            text = to_str(s).strip()
            m = re.match(r"[-+]?[0-9a-zA-Z]+", text)
            base = int(to_num(radix)) if radix is not UNDEFINED else 10
            if not m:
                return math.nan
            digits = m.group(0)
            for end in range(len(digits), 0, -1):
                try:
                    return int(digits[:end], base)
                except ValueError:
                    continue
            return math.nan

        def parse_float(s: Any) -> Any:
            m = re.match(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", to_str(s))
            return expressions.number(float(m.group(0))) if m else math.nan

        def parse_json(s: Any) -> Any:
            try:
                return orjson.loads(to_str(s))
            except orjson.JSONDecodeError as exc:
                raise ExpressionError(to_str(s)[:80], f"parseJson failed: {exc}") from None

        def regexp(pattern: Any, flags: Any = "") -> re.Pattern[str]:
            text = to_str(pattern)
            if len(text) > 500:
                raise ExpressionError(text[:80], "regexp patterns are limited to 500 characters")
            fl = to_str(flags) if flags is not UNDEFINED else ""
            compiled = re.compile(text, (re.IGNORECASE if "i" in fl else 0) | (re.MULTILINE if "m" in fl else 0)
                                  | (re.DOTALL if "s" in fl else 0))
            if "g" in fl:
                compiled = re.compile(compiled.pattern + GLOBAL_MARK, compiled.flags)
            return compiled

        def strip_html(s: Any, *_: Any) -> str:
            return html.unescape(re.sub(r"<[^>]*>", "", to_str(s)))

        def fn(name: str, f: Callable[..., Any]) -> JsFunction:
            return JsFunction(name, f)

        return {
            "Math": expressions.BUILTINS["Math"],
            "transformMap": fn("transformMap", transform_map),
            "expressionMap": fn("expressionMap", lambda xs, e: [item_eval(e, x) for x in each(xs)]),
            "expressionFilter": fn("expressionFilter", lambda xs, e: [x for x in each(xs) if expressions.truthy(item_eval(e, x))]),
            "expressionFind": fn("expressionFind", lambda xs, e: next((x for x in each(xs) if expressions.truthy(item_eval(e, x))), None)),
            "expressionSort": fn("expressionSort", sort),
            "expressionReduce": fn("expressionReduce", reduce),
            "expressionGroup": fn("expressionGroup", group),
            "expressionMax": fn("expressionMax", lambda xs, e: max((to_num(item_eval(e, x)) for x in each(xs)), default=-math.inf)),
            "expressionMin": fn("expressionMin", lambda xs, e: min((to_num(item_eval(e, x)) for x in each(xs)), default=math.inf)),
            "unique": fn("unique", unique),
            "merge": fn("merge", merge),
            "pathPattern": fn("pathPattern", path_pattern),
            "path": fn("path", path),
            "propsToList": fn("propsToList", props_to_list),
            "objectEntries": fn("objectEntries", lambda o: [[k, v] for k, v in o.items()] if isinstance(o, dict) else []),
            "parseInt": fn("parseInt", parse_int),
            "parseFloat": fn("parseFloat", parse_float),
            "parseJson": fn("parseJson", parse_json),
            "uuid": fn("uuid", lambda: str(uuid.uuid4())),
            "formatDate": fn("formatDate", format_date),
            "newDate": fn("newDate", new_date),
            "encodeURIComponent": fn("encodeURIComponent", lambda s: quote(to_str(s), safe="-_.!~*'()")),
            "literal": fn("literal", lambda o: o),
            "regexp": fn("regexp", regexp),
            "stripHtml": fn("stripHtml", strip_html),
            "btoa": fn("btoa", lambda s: base64.b64encode(to_str(s).encode("latin-1", "replace")).decode()),
        }


# Helpers whose argument at these positions (after the name) is an expression, not a value.
_EXPRESSION_ARGS: dict[str, tuple[int, ...]] = {
    "expressionMap": (1,), "expressionFilter": (1,), "expressionFind": (1,), "expressionSort": (1, 2),
    "expressionReduce": (2,), "expressionGroup": (1,), "expressionMax": (1,), "expressionMin": (1,),
    "transformMap": (1,),
}


def _get(container: Any, key: Any) -> Any:
    if isinstance(container, dict):
        return container.get(str(key), UNDEFINED)
    if isinstance(container, list) and isinstance(key, int):
        return container[key] if 0 <= key < len(container) else UNDEFINED
    return UNDEFINED


def _set(container: Any, key: Any, value: Any) -> None:
    if isinstance(container, dict):
        if value is UNDEFINED:
            container.pop(str(key), None)
        else:
            container[str(key)] = value
    elif isinstance(container, list):
        if isinstance(key, str) and key.isdigit():
            key = int(key)
        if isinstance(key, int):
            while len(container) <= key:
                container.append(UNDEFINED)
            container[key] = value


# --- dates ----------------------------------------------------------------------------------------

_DATE_TOKENS = re.compile(r"\[([^\]]*)\]|YYYY|YY|MMMM|MMM|MM|M|DD|D|dddd|ddd|HH|H|hh|h|mm|m|ss|s|SSS|A|a|Z")


def new_date(*args: Any) -> datetime:
    if not args:
        return datetime.now(UTC)
    if len(args) == 1:
        v = args[0]
        if isinstance(v, int | float) and not isinstance(v, bool):
            return datetime.fromtimestamp(v / 1000, UTC)
        if isinstance(v, datetime):
            return v
        text = to_str(v).strip().replace("Z", "+00:00")
        try:
            d = datetime.fromisoformat(text)
        except ValueError:
            raise ExpressionError(to_str(v), "newDate() could not read this date") from None
        return d if d.tzinfo else d.replace(tzinfo=UTC)
    parts = [int(to_num(a)) for a in args] + [0] * 7
    return datetime(parts[0], parts[1] + 1, parts[2] or 1, parts[3], parts[4], parts[5], parts[6] * 1000, tzinfo=UTC)


def format_date(value: Any, fmt: Any = UNDEFINED) -> str:
    d = value if isinstance(value, datetime) else new_date(value)
    if fmt is UNDEFINED or fmt is None:
        return d.isoformat(timespec="seconds")
    if fmt == "forQuery":
        return f"datetime'{d.isoformat(timespec='seconds')[:19]}'"

    def token(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            return m.group(1)
        t = m.group(0)
        hour12 = d.hour % 12 or 12
        table = {
            "YYYY": f"{d.year:04d}", "YY": f"{d.year % 100:02d}", "MMMM": d.strftime("%B"), "MMM": d.strftime("%b"),
            "MM": f"{d.month:02d}", "M": str(d.month), "DD": f"{d.day:02d}", "D": str(d.day),
            "dddd": d.strftime("%A"), "ddd": d.strftime("%a"), "HH": f"{d.hour:02d}", "H": str(d.hour),
            "hh": f"{hour12:02d}", "h": str(hour12), "mm": f"{d.minute:02d}", "m": str(d.minute),
            "ss": f"{d.second:02d}", "s": str(d.second), "SSS": f"{d.microsecond // 1000:03d}",
            "A": "AM" if d.hour < 12 else "PM", "a": "am" if d.hour < 12 else "pm",
            "Z": d.strftime("%z")[:3] + ":" + d.strftime("%z")[3:] if d.tzinfo else "",
        }
        return table[t]

    return _DATE_TOKENS.sub(token, to_str(fmt))
