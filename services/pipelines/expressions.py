"""A safe evaluator for the JavaScript subset of Restspace conditions and transformations.

    evaluate("a.b + 1 > 2 && isJson", {"a": {"b": 3}, "isJson": True})  # -> True

Supported: literals (numbers, strings, template strings, arrays, objects, true/false/null/undefined),
member access (`.x`, `[e]`, `?.`), calls of the helper functions and of a whitelist of string, array,
Math, JSON and Object methods, unary `! - + typeof`, arithmetic, comparison (`== != === !==`), `in`,
`&& || ??` and `?:`. Refused when parsing: function literals (`function`, `=>`), `new`, regex
literals, spread, assignment. Every evaluation runs on a `Budget`: a step count, a wall-clock
deadline and a cap on the size of the strings and lists it builds, so no expression can hang or
exhaust memory. Nothing here performs I/O.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from services.pipelines.errors import BudgetExceeded, ExpressionError


class _Undefined:
    """JavaScript's `undefined` (Python's None is `null`)."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "undefined"

    def __bool__(self) -> bool:
        return False


UNDEFINED: Any = _Undefined()
MAX_SOURCE = 10_000
MAX_DEPTH = 64
GLOBAL_MARK = "(?#g)"  # appended to a compiled regexp made with the JS "g" flag


@dataclass
class Budget:
    """What one evaluation (and everything it calls) may spend."""

    steps: int = 200_000
    seconds: float = 1.0
    max_size: int = 1_000_000  # characters of a built string, items of a built list
    _deadline: float = 0.0

    def start(self) -> Budget:
        if not self._deadline:
            self._deadline = time.monotonic() + self.seconds
        return self

    def tick(self, source: str, n: int = 1) -> None:
        self.steps -= n
        if self.steps < 0:
            raise BudgetExceeded(source, "step budget exhausted")
        if self.steps % 1024 == 0 and time.monotonic() > self._deadline:
            raise BudgetExceeded(source, f"took longer than {self.seconds} s")

    def size(self, source: str, n: int) -> None:
        if n > self.max_size:
            raise BudgetExceeded(source, f"built a value of {n} items/characters (limit {self.max_size})")


class JsFunction:
    """A callable exposed to expressions. `raw_args` gets the unevaluated argument nodes (for helpers
    that take expressions, like expressionMap)."""

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __repr__(self) -> str:
        return f"function {self.name}()"


# --- values -------------------------------------------------------------------------------------


def truthy(v: Any) -> bool:
    if v is None or v is UNDEFINED or v is False:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return v != 0 and not (isinstance(v, float) and math.isnan(v))
    if isinstance(v, str):
        return v != ""
    return True


def number(v: Any) -> int | float:
    """JavaScript numbers: ints stay ints while integral."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v  # type: ignore[no-any-return]


def to_num(v: Any) -> int | float:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int | float):
        return v
    if v is None:
        return 0
    if isinstance(v, str):
        s = v.strip()
        if not s:
            return 0
        try:
            return number(float(int(s, 16)) if s.lower().startswith("0x") else float(s))
        except ValueError:
            return math.nan
    if isinstance(v, list) and len(v) <= 1:
        return to_num(v[0]) if v else 0
    return math.nan


def to_str(v: Any) -> str:
    if v is None:
        return "null"
    if v is UNDEFINED:
        return "undefined"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        if v.is_integer() and abs(v) < 1e21:
            return str(int(v))
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return ",".join("" if x is None or x is UNDEFINED else to_str(x) for x in v)
    if isinstance(v, dict):
        return "[object Object]"
    if isinstance(v, JsFunction):
        return repr(v)
    if isinstance(v, re.Pattern):
        return f"/{v.pattern}/"
    return str(v)


def type_of(v: Any) -> str:
    if v is UNDEFINED:
        return "undefined"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, JsFunction):
        return "function"
    return "object"


def strict_eq(a: Any, b: Any) -> bool:
    if a is UNDEFINED or b is UNDEFINED:
        return a is b
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list | dict):
        return a is b
    return bool(a == b)


def loose_eq(a: Any, b: Any) -> bool:
    if (a is None or a is UNDEFINED) and (b is None or b is UNDEFINED):
        return True
    if a is None or a is UNDEFINED or b is None or b is UNDEFINED:
        return False
    if type(a) is type(b) or (isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool)
                              and not isinstance(b, bool)):
        return strict_eq(a, b)
    if isinstance(a, list | dict) or isinstance(b, list | dict):
        if isinstance(a, list | dict) and isinstance(b, list | dict):
            return a is b
        other = b if isinstance(a, list | dict) else a
        return loose_eq(to_str(a if isinstance(a, list | dict) else b), other)
    return to_num(a) == to_num(b)


def _compare(op: str, a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        x: Any = a
        y: Any = b
    else:
        x, y = to_num(a), to_num(b)
        if isinstance(x, float) and math.isnan(x) or isinstance(y, float) and math.isnan(y):
            return False
    return bool({"<": x < y, ">": x > y, "<=": x <= y, ">=": x >= y}[op])


def plain(v: Any) -> Any:
    """A value as JSON can hold it: undefined in lists becomes null, in objects disappears."""
    if v is UNDEFINED:
        return None
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items() if x is not UNDEFINED}
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return None
        return number(v)
    if isinstance(v, JsFunction | re.Pattern):
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat().replace("+00:00", "Z")
    return v


# --- tokens -------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<tmpl>`(?:[^`\\]|\\.)*`)
    | (?P<name>[A-Za-z_$][A-Za-z0-9_$]*)
    | (?P<op>\.\.\.|===|!==|\*\*|\?\?|\?\.|=>|==|!=|<=|>=|&&|\|\||[-+*/%<>!?:.,()\[\]{}=~^&|])
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


def _unescape(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            n = body[i + 1]
            if n == "u" and i + 5 < len(body) + 1:
                try:
                    out.append(chr(int(body[i + 2 : i + 6], 16)))
                    i += 6
                    continue
                except ValueError:
                    pass
            out.append(_ESCAPES.get(n, n))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _tokenize(source: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(source):
        if source[pos:].strip() == "":
            break
        m = _TOKEN.match(source, pos)
        if not m or m.end() == pos:
            raise ExpressionError(source, f"unexpected character {source[pos:].strip()[:1]!r} at {pos}")
        kind = m.lastgroup or ""
        text = m.group(kind)
        if kind == "op" and text == "/" and (not tokens or tokens[-1][0] == "op" and tokens[-1][1] not in (")", "]")):
            raise ExpressionError(source, "regular expression literals are not allowed (use regexp('...'))")
        tokens.append((kind, text))
        pos = m.end()
    tokens.append(("end", ""))
    return tokens


# --- parser (Pratt) -----------------------------------------------------------------------------

_BINARY = {
    "??": 1, "||": 2, "&&": 3, "|": 4, "^": 5, "&": 6,
    "==": 7, "!=": 7, "===": 7, "!==": 7,
    "<": 8, ">": 8, "<=": 8, ">=": 8, "in": 8,
    "+": 10, "-": 10, "*": 11, "/": 11, "%": 11, "**": 12,
}
_FORBIDDEN_WORDS = {"function": "function literals", "new": "'new'", "class": "classes", "this": "'this'",
                    "async": "async functions", "await": "'await'", "yield": "'yield'",
                    "var": "declarations", "let": "declarations", "const": "declarations",
                    "delete": "'delete'", "void": "'void'", "instanceof": "'instanceof'"}


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokenize(source)
        self.i = 0
        self.depth = 0

    def fail(self, reason: str) -> ExpressionError:
        return ExpressionError(self.source, reason)

    def peek(self, offset: int = 0) -> tuple[str, str]:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def next(self) -> tuple[str, str]:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        kind, got = self.next()
        if got != text or kind not in ("op", "name"):
            raise self.fail(f"expected {text!r} but found {got or 'the end'!r}")

    def at(self, text: str) -> bool:
        kind, got = self.peek()
        return kind in ("op", "name") and got == text

    def parse(self) -> Any:
        node = self.expression()
        kind, got = self.peek()
        if kind != "end":
            raise self.fail(f"unexpected {got!r}")
        return node

    def expression(self, min_prec: int = 0) -> Any:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail("nested too deeply")
        left = self.unary()
        while True:
            kind, op = self.peek()
            if op == "=>":
                raise self.fail("function literals (=>) are not allowed")
            if op == "=" and kind == "op":
                raise self.fail("assignment is not allowed")
            if op == "?" and kind == "op" and min_prec == 0:
                self.next()
                then = self.expression(0)
                self.expect(":")
                other = self.expression(0)
                left = ("cond", left, then, other)
                continue
            prec = _BINARY.get(op) if kind == "op" or op == "in" else None
            if prec is None or prec < min_prec:
                break
            self.next()
            right = self.expression(prec if op == "**" else prec + 1)
            left = ("logic" if op in ("&&", "||", "??") else "bin", op, left, right)
        self.depth -= 1
        return left

    def unary(self) -> Any:
        kind, tok = self.peek()
        if kind == "op" and tok in ("!", "-", "+", "~"):
            self.next()
            return ("unary", tok, self.unary())
        if kind == "name" and tok == "typeof":
            self.next()
            return ("unary", "typeof", self.unary())
        if tok == "...":
            raise self.fail("spread (...) is not allowed")
        return self.postfix(self.primary())

    def postfix(self, node: Any) -> Any:
        while True:
            kind, tok = self.peek()
            if kind != "op":
                return node
            if tok == ".":
                self.next()
                k, name = self.next()
                if k != "name":
                    raise self.fail(f"expected a property name after '.', found {name!r}")
                node = ("member", node, ("lit", name), False)
            elif tok == "?.":
                self.next()
                if self.at("("):
                    node = ("call", node, self.arguments(), True)
                elif self.at("["):
                    self.next()
                    prop = self.expression()
                    self.expect("]")
                    node = ("member", node, prop, True)
                else:
                    k, name = self.next()
                    if k != "name":
                        raise self.fail(f"expected a property name after '?.', found {name!r}")
                    node = ("member", node, ("lit", name), True)
            elif tok == "[":
                self.next()
                prop = self.expression()
                self.expect("]")
                node = ("member", node, prop, False)
            elif tok == "(":
                node = ("call", node, self.arguments(), False)
            else:
                return node

    def arguments(self) -> list[Any]:
        self.expect("(")
        args: list[Any] = []
        while not self.at(")"):
            if self.at("..."):
                raise self.fail("spread (...) is not allowed")
            args.append(self.expression())
            if not self.at(")"):
                self.expect(",")
        self.expect(")")
        return args

    def primary(self) -> Any:
        kind, tok = self.next()
        if kind == "num":
            value = float(int(tok, 16)) if tok.lower().startswith("0x") else float(tok)
            return ("lit", number(value))
        if kind == "str":
            return ("lit", _unescape(tok[1:-1]))
        if kind == "tmpl":
            return self.template(tok[1:-1])
        if kind == "name":
            if tok in _FORBIDDEN_WORDS:
                raise self.fail(f"{_FORBIDDEN_WORDS[tok]} are not allowed" if tok in ("function", "class", "var", "let", "const", "async")
                                else f"{_FORBIDDEN_WORDS[tok]} is not allowed")
            literal = {"true": True, "false": False, "null": None, "undefined": UNDEFINED,
                       "NaN": math.nan, "Infinity": math.inf}
            if tok in literal:
                return ("lit", literal[tok])
            if self.at("=>"):
                raise self.fail("function literals (=>) are not allowed")
            return ("id", tok)
        if tok == "(":
            if self.at(")") and self.peek(1)[1] == "=>":
                raise self.fail("function literals (=>) are not allowed")
            node = self.expression()
            self.expect(")")
            if self.at("=>"):
                raise self.fail("function literals (=>) are not allowed")
            return node
        if tok == "[":
            items: list[Any] = []
            while not self.at("]"):
                if self.at("..."):
                    raise self.fail("spread (...) is not allowed")
                items.append(self.expression())
                if not self.at("]"):
                    self.expect(",")
            self.expect("]")
            return ("arr", items)
        if tok == "{":
            props: list[tuple[Any, Any]] = []
            while not self.at("}"):
                k, key = self.next()
                if key == "...":
                    raise self.fail("spread (...) is not allowed")
                if k == "str":
                    key_node: Any = ("lit", _unescape(key[1:-1]))
                elif k in ("name", "num"):
                    key_node = ("lit", key)
                elif key == "[":
                    key_node = self.expression()
                    self.expect("]")
                else:
                    raise self.fail(f"unexpected {key!r} in an object literal")
                if self.at(":"):
                    self.next()
                    props.append((key_node, self.expression()))
                elif k == "name":
                    props.append((key_node, ("id", key)))
                else:
                    raise self.fail(f"expected ':' after the key {key!r}")
                if not self.at("}"):
                    self.expect(",")
            self.expect("}")
            return ("obj", props)
        raise self.fail(f"unexpected {tok or 'end of expression'!r}")

    def template(self, body: str) -> Any:
        parts: list[Any] = []
        i = 0
        text: list[str] = []
        while i < len(body):
            if body[i] == "\\" and i + 1 < len(body):
                text.append(_unescape(body[i : i + 2]))
                i += 2
            elif body.startswith("${", i):
                depth, j = 1, i + 2
                while j < len(body) and depth:
                    depth += {"{": 1, "}": -1}.get(body[j], 0)
                    j += 1
                if depth:
                    raise self.fail("unterminated ${ in a template string")
                parts.append(("lit", "".join(text)))
                text = []
                parts.append(_Parser(body[i + 2 : j - 1]).parse())
                i = j
            else:
                text.append(body[i])
                i += 1
        parts.append(("lit", "".join(text)))
        return ("tmpl", parts)


_cache: dict[str, Any] = {}


def parse(source: str) -> Any:
    """The syntax tree of an expression (cached); ExpressionError when it is not in the subset."""
    if not isinstance(source, str):
        raise ExpressionError(repr(source), "an expression must be a string")
    if len(source) > MAX_SOURCE:
        raise ExpressionError(source, f"longer than {MAX_SOURCE} characters")
    tree = _cache.get(source)
    if tree is None:
        if not source.strip():
            raise ExpressionError(source, "empty expression")
        tree = _Parser(source).parse()
        if len(_cache) > 4096:
            _cache.clear()
        _cache[source] = tree
    return tree


# --- methods of built-in values -----------------------------------------------------------------


def _js_slice_index(i: Any, n: int, default: int) -> int:
    if i is UNDEFINED:
        return default
    k = int(to_num(i))
    return max(0, n + k) if k < 0 else min(k, n)


def _string_method(s: str, name: str, ev: _Evaluator) -> Any:
    def replace(pattern: Any, repl: Any, all_: bool = False) -> str:
        r = to_str(repl)
        if isinstance(pattern, re.Pattern):
            count = 0 if pattern.pattern.endswith(GLOBAL_MARK) or all_ else 1
            out: str = pattern.sub(lambda m: r.replace("$&", m.group(0)), s, count=count)
        else:
            p = to_str(pattern)
            out = s.replace(p, r) if all_ else s.replace(p, r, 1)
        ev.budget.size(ev.source, len(out))
        return out

    def split(sep: Any = UNDEFINED, limit: Any = UNDEFINED) -> list[str]:
        if sep is UNDEFINED:
            parts = [s]
        elif isinstance(sep, re.Pattern):
            parts = sep.split(s)
        elif sep == "":
            parts = list(s)
        else:
            parts = s.split(to_str(sep))
        return parts if limit is UNDEFINED else parts[: int(to_num(limit))]

    def repeat(n: Any) -> str:
        k = int(to_num(n))
        ev.budget.size(ev.source, len(s) * max(k, 0))
        return s * max(k, 0)

    def match(p: Any) -> Any:
        rx = p if isinstance(p, re.Pattern) else re.compile(re.escape(to_str(p)))
        if rx.pattern.endswith(GLOBAL_MARK):
            found = [m.group(0) for m in rx.finditer(s)]
            return found or None
        m = rx.search(s)
        return [m.group(0), *[g if g is not None else UNDEFINED for g in m.groups()]] if m else None

    methods: dict[str, Callable[..., Any]] = {
        "toUpperCase": lambda: s.upper(), "toLowerCase": lambda: s.lower(), "trim": lambda: s.strip(),
        "trimStart": lambda: s.lstrip(), "trimEnd": lambda: s.rstrip(),
        "includes": lambda x, *_: to_str(x) in s, "startsWith": lambda x, *_: s.startswith(to_str(x)),
        "endsWith": lambda x, *_: s.endswith(to_str(x)), "indexOf": lambda x, *_: s.find(to_str(x)),
        "lastIndexOf": lambda x, *_: s.rfind(to_str(x)),
        "slice": lambda a=UNDEFINED, b=UNDEFINED: s[_js_slice_index(a, len(s), 0):_js_slice_index(b, len(s), len(s))],
        "substring": lambda a=0, b=UNDEFINED: s[max(0, int(to_num(a))): len(s) if b is UNDEFINED else max(0, int(to_num(b)))],
        "substr": lambda a=0, n=UNDEFINED: s[_js_slice_index(a, len(s), 0):][: None if n is UNDEFINED else int(to_num(n))],
        "charAt": lambda i=0: s[int(to_num(i))] if 0 <= int(to_num(i)) < len(s) else "",
        "charCodeAt": lambda i=0: ord(s[int(to_num(i))]) if 0 <= int(to_num(i)) < len(s) else math.nan,
        "split": split, "replace": replace, "replaceAll": lambda p, r: replace(p, r, True), "repeat": repeat,
        "padStart": lambda n, c=" ": s.rjust(min(int(to_num(n)), ev.budget.max_size), (to_str(c) or " ")[0]),
        "padEnd": lambda n, c=" ": s.ljust(min(int(to_num(n)), ev.budget.max_size), (to_str(c) or " ")[0]),
        "concat": lambda *xs: s + "".join(to_str(x) for x in xs), "toString": lambda: s,
        "match": match, "search": lambda p: (m.start() if (m := (p if isinstance(p, re.Pattern) else re.compile(re.escape(to_str(p)))).search(s)) else -1),
        "localeCompare": lambda o: (s > to_str(o)) - (s < to_str(o)),
    }
    if name == "length":
        return len(s)
    if name in methods:
        return JsFunction(name, methods[name])
    if name.isdigit():
        i = int(name)
        return s[i] if i < len(s) else UNDEFINED
    return UNDEFINED


def _array_method(a: list[Any], name: str, ev: _Evaluator) -> Any:
    def join(sep: Any = ",") -> str:
        out = ("," if sep is UNDEFINED else to_str(sep)).join("" if x is None or x is UNDEFINED else to_str(x) for x in a)
        ev.budget.size(ev.source, len(out))
        return out

    def concat(*xs: Any) -> list[Any]:
        out = list(a)
        for x in xs:
            out.extend(x if isinstance(x, list) else [x])
        ev.budget.size(ev.source, len(out))
        return out

    def index_of(x: Any, *_: Any) -> int:
        return next((i for i, y in enumerate(a) if strict_eq(x, y)), -1)

    def flat(depth: Any = 1) -> list[Any]:
        def go(xs: list[Any], d: int) -> list[Any]:
            out: list[Any] = []
            for x in xs:
                out.extend(go(x, d - 1) if isinstance(x, list) and d > 0 else [x])
            return out

        return go(a, int(to_num(depth)))

    methods: dict[str, Callable[..., Any]] = {
        "join": join, "concat": concat, "indexOf": index_of, "includes": lambda x, *_: index_of(x) >= 0,
        "slice": lambda s=UNDEFINED, e=UNDEFINED: a[_js_slice_index(s, len(a), 0):_js_slice_index(e, len(a), len(a))],
        "reverse": lambda: a[::-1], "flat": flat, "toString": lambda: to_str(a),
        "sort": lambda: sorted(a, key=lambda x: to_str(x)),
        "lastIndexOf": lambda x: max((i for i, y in enumerate(a) if strict_eq(x, y)), default=-1),
        "at": lambda i: a[int(to_num(i))] if -len(a) <= int(to_num(i)) < len(a) else UNDEFINED,
    }
    if name == "length":
        return len(a)
    if name in methods:
        return JsFunction(name, methods[name])
    return UNDEFINED


def _object_statics() -> dict[str, Any]:
    def entries(o: Any) -> list[Any]:
        if isinstance(o, list):
            return [[str(i), v] for i, v in enumerate(o)]
        return [[k, v] for k, v in o.items()] if isinstance(o, dict) else []

    def keys(o: Any) -> list[str]:
        return [e[0] for e in entries(o)]

    def values(o: Any) -> list[Any]:
        return [e[1] for e in entries(o)]

    def assign(target: Any, *sources: Any) -> Any:
        out = dict(target) if isinstance(target, dict) else {}
        for s in sources:
            if isinstance(s, dict):
                out.update(s)
        return out

    def from_entries(items: Any) -> dict[str, Any]:
        return {to_str(k): v for k, v in items} if isinstance(items, list) else {}

    return {"keys": JsFunction("keys", keys), "values": JsFunction("values", values),
            "entries": JsFunction("entries", entries), "assign": JsFunction("assign", assign),
            "fromEntries": JsFunction("fromEntries", from_entries)}


def _math() -> dict[str, Any]:
    def fn(name: str, f: Callable[..., Any]) -> JsFunction:
        return JsFunction(name, lambda *xs: number(float(f(*[to_num(x) for x in xs]))))

    def js_round(x: Any) -> float:
        return float(math.floor(x + 0.5))

    return {
        "abs": fn("abs", abs), "floor": fn("floor", math.floor), "ceil": fn("ceil", math.ceil),
        "round": fn("round", js_round), "trunc": fn("trunc", math.trunc), "sqrt": fn("sqrt", math.sqrt),
        "pow": fn("pow", math.pow), "min": fn("min", lambda *xs: min(xs) if xs else math.inf),
        "max": fn("max", lambda *xs: max(xs) if xs else -math.inf), "log": fn("log", math.log),
        "exp": fn("exp", math.exp), "sign": fn("sign", lambda x: (x > 0) - (x < 0)),
        "random": JsFunction("random", lambda: __import__("random").random()),
        "PI": math.pi, "E": math.e,
    }


def _json_statics(ev_budget: Budget) -> dict[str, Any]:
    def stringify(v: Any, *_: Any) -> Any:
        if v is UNDEFINED:
            return UNDEFINED
        return json.dumps(plain(v), separators=(",", ":"), ensure_ascii=False)

    def parse_json(s: Any) -> Any:
        try:
            return json.loads(to_str(s))
        except ValueError as exc:
            raise ExpressionError(to_str(s)[:80], f"JSON.parse failed: {exc}") from None

    return {"stringify": JsFunction("stringify", stringify), "parse": JsFunction("parse", parse_json)}


BUILTINS: dict[str, Any] = {
    "Math": _math(),
    "Object": _object_statics(),
    "JSON": _json_statics(Budget()),
    "String": JsFunction("String", lambda v="": to_str(v)),
    "Number": JsFunction("Number", lambda v=0: number(float(to_num(v))) if isinstance(to_num(v), float) else to_num(v)),
    "Boolean": JsFunction("Boolean", lambda v=False: truthy(v)),
    "Array": {"isArray": JsFunction("isArray", lambda v: isinstance(v, list))},
    "isNaN": JsFunction("isNaN", lambda v: isinstance(to_num(v), float) and math.isnan(to_num(v))),
}


# --- evaluation ---------------------------------------------------------------------------------


class _Evaluator:
    def __init__(self, source: str, scope: Callable[[str], Any], budget: Budget) -> None:
        self.source = source
        self.scope = scope
        self.budget = budget

    def fail(self, reason: str) -> ExpressionError:
        return ExpressionError(self.source, reason)

    def member(self, obj: Any, prop: Any) -> Any:
        if obj is None or obj is UNDEFINED:
            raise self.fail(f"cannot read property {to_str(prop)!r} of {to_str(obj)}")
        if isinstance(obj, dict):
            key = to_str(prop)
            if key in obj:
                return obj[key]
            if key in ("hasOwnProperty",):
                return JsFunction(key, lambda k: to_str(k) in obj)
            return UNDEFINED
        if isinstance(obj, list):
            if isinstance(prop, int | float) and not isinstance(prop, bool):
                i = int(prop)
                return obj[i] if 0 <= i < len(obj) and i == prop else UNDEFINED
            key = to_str(prop)
            if key.isdigit():
                i = int(key)
                return obj[i] if i < len(obj) else UNDEFINED
            return _array_method(obj, key, self)
        if isinstance(obj, str):
            if isinstance(prop, int | float) and not isinstance(prop, bool):
                i = int(prop)
                return obj[i] if 0 <= i < len(obj) else UNDEFINED
            return _string_method(obj, to_str(prop), self)
        if isinstance(obj, int | float) and not isinstance(obj, bool):
            key = to_str(prop)
            if key == "toFixed":
                return JsFunction("toFixed", lambda d=0: f"{obj:.{int(to_num(d))}f}")
            if key == "toString":
                return JsFunction("toString", lambda *_: to_str(obj))
            return UNDEFINED
        if isinstance(obj, re.Pattern):
            if to_str(prop) == "test":
                return JsFunction("test", lambda s: obj.search(to_str(s)) is not None)
            return UNDEFINED
        if hasattr(obj, "isoformat"):
            return _date_member(obj, to_str(prop))
        if isinstance(obj, JsFunction | bool):
            return UNDEFINED
        return UNDEFINED

    def eval(self, node: Any) -> Any:
        self.budget.tick(self.source)
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "id":
            return self.scope(node[1])
        if kind == "member":
            obj = self.eval(node[1])
            if node[3] and (obj is None or obj is UNDEFINED):
                return UNDEFINED
            return self.member(obj, self.eval(node[2]))
        if kind == "call":
            fn = self.eval(node[1])
            if node[3] and (fn is None or fn is UNDEFINED):
                return UNDEFINED
            if not isinstance(fn, JsFunction):
                raise self.fail(f"{_describe(node[1])} is not a function")
            args = [self.eval(a) for a in node[2]]
            try:
                result = fn(*args)
            except ExpressionError:
                raise
            except (TypeError, ValueError, IndexError, KeyError, AttributeError, OverflowError, re.error,
                    ZeroDivisionError, RecursionError) as exc:
                raise self.fail(f"{fn.name}() failed: {exc}") from None
            if isinstance(result, str | list):
                self.budget.size(self.source, len(result))
            return result
        if kind == "unary":
            op, v = node[1], self.eval(node[2])
            if op == "!":
                return not truthy(v)
            if op == "typeof":
                return type_of(v)
            n = to_num(v)
            if op == "-":
                return number(-n) if not isinstance(n, float) or not math.isnan(n) else n
            if op == "~":
                return ~int(n) if not (isinstance(n, float) and (math.isnan(n) or math.isinf(n))) else -1
            return n
        if kind == "logic":
            a = self.eval(node[2])
            op = node[1]
            if op == "&&":
                return self.eval(node[3]) if truthy(a) else a
            if op == "||":
                return a if truthy(a) else self.eval(node[3])
            return self.eval(node[3]) if a is None or a is UNDEFINED else a
        if kind == "bin":
            return self.binary(node[1], self.eval(node[2]), self.eval(node[3]))
        if kind == "cond":
            return self.eval(node[2]) if truthy(self.eval(node[1])) else self.eval(node[3])
        if kind == "arr":
            items = [self.eval(x) for x in node[1]]
            self.budget.size(self.source, len(items))
            return items
        if kind == "obj":
            return {to_str(self.eval(k)): self.eval(v) for k, v in node[1]}
        if kind == "tmpl":
            out = "".join(to_str(self.eval(p)) for p in node[1])
            self.budget.size(self.source, len(out))
            return out
        raise self.fail(f"unknown node {kind}")

    def binary(self, op: str, a: Any, b: Any) -> Any:
        if op == "+":
            if isinstance(a, str | list | dict) or isinstance(b, str | list | dict):
                out = to_str(a) + to_str(b)
                self.budget.size(self.source, len(out))
                return out
            return number(to_num(a) + to_num(b))
        if op in ("-", "*", "/", "%", "**"):
            x, y = to_num(a), to_num(b)
            try:
                if op == "-":
                    return number(x - y)
                if op == "*":
                    return number(x * y)
                if op == "/":
                    if y == 0:
                        return math.nan if x == 0 or (isinstance(x, float) and math.isnan(x)) else math.copysign(math.inf, x) * (1 if str(y)[0] != "-" else -1)
                    return number(x / y)
                if op == "%":
                    return number(math.fmod(x, y)) if y != 0 else math.nan
                if abs(y) > 1024 and abs(x) > 1:
                    return math.inf
                return number(float(x) ** y)
            except (OverflowError, ValueError):
                return math.nan
        if op == "===":
            return strict_eq(a, b)
        if op == "!==":
            return not strict_eq(a, b)
        if op == "==":
            return loose_eq(a, b)
        if op == "!=":
            return not loose_eq(a, b)
        if op in ("<", ">", "<=", ">="):
            return _compare(op, a, b)
        if op == "in":
            if isinstance(b, dict):
                return to_str(a) in b
            if isinstance(b, list):
                k = to_str(a)
                return k.isdigit() and int(k) < len(b)
            raise self.fail("'in' needs an object on its right")
        if op in ("&", "|", "^"):
            x, y = int(to_num(a) or 0), int(to_num(b) or 0)
            return {"&": x & y, "|": x | y, "^": x ^ y}[op]
        raise self.fail(f"unknown operator {op}")


def _describe(node: Any) -> str:
    if node[0] == "id":
        return str(node[1])
    if node[0] == "member" and node[2][0] == "lit":
        return f"{_describe(node[1])}.{node[2][1]}"
    return "the value"


def _date_member(d: Any, name: str) -> Any:
    getters: dict[str, Callable[[], Any]] = {
        "getFullYear": lambda: d.year, "getMonth": lambda: d.month - 1, "getDate": lambda: d.day,
        "getDay": lambda: (d.weekday() + 1) % 7, "getHours": lambda: d.hour, "getMinutes": lambda: d.minute,
        "getSeconds": lambda: d.second, "getTime": lambda: int(d.timestamp() * 1000),
        "toISOString": lambda: d.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "valueOf": lambda: int(d.timestamp() * 1000),
    }
    if name in getters:
        return JsFunction(name, getters[name])
    return UNDEFINED


Scope = dict[str, Any]


def evaluate(source: str, scope: Scope | Callable[[str], Any], budget: Budget | None = None,
             helpers: Scope | None = None) -> Any:
    """Evaluate `source` with names looked up in `scope`, then `helpers`, then the built-ins."""
    tree = parse(source)
    budget = (budget or Budget()).start()
    if callable(scope):
        lookup = scope
    else:
        names = scope
        extra = helpers or {}

        def lookup(name: str) -> Any:
            if name in names:
                return names[name]
            if name in extra:
                return extra[name]
            return BUILTINS.get(name, UNDEFINED)

    try:
        return _Evaluator(source, lookup, budget).eval(tree)
    except RecursionError:
        raise ExpressionError(source, "nested too deeply") from None


def check(source: str) -> None:
    """Parse only: raises ExpressionError if `source` is not a valid expression."""
    parse(source)


def call_names(values: Sequence[Any]) -> list[str]:
    return [to_str(v) for v in values]
