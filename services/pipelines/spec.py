"""The pipeline spec: JSON in, a typed tree out, with errors that point at the element.

    parse(["GET /json/a/$>0", ["~$this", "GET /json/b/${id} ~b"], "jsonObject"])

Both spellings of a step are read (seed: `? :json GET /x ~name`; Restspace: `try if (isJson) GET /x
:name`). A step is `[prefix] [condition] [METHOD [bodyJsonPath]] url [rename]`. Errors name the
element by a path like `$[2][1]` and say what is wrong: `$[2][1]: unknown mode 'paralel'`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote_plus, urlsplit

from services.pipelines import expressions
from services.pipelines.errors import ExpressionError, SpecError

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "$METHOD")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MODES = ("serial", "parallel", "conditional", "tee", "teeWait")
ACTIONS = ("next", "end", "stop")
SPLITTERS = ("split", "unzip", "jsonSplit")
JOINERS = ("multipart", "zip", "jsonObject")
INITIALIZERS = ("targetHost", "concurrency", "trace")
Action = Literal["next", "end", "stop"]


@dataclass(frozen=True)
class Mode:
    kind: str = "serial"  # serial | parallel | conditional | tee | teeWait
    fail: str = "next"
    succeed: str = "next"


@dataclass(frozen=True)
class Condition:
    """`mime` (:json), `name` (#body), `error` (!404,500-599:text) or `expr` (if (...))."""

    kind: str
    mime: str = ""
    name: str = ""
    ranges: tuple[tuple[int, int], ...] = ()
    text: str = ""
    expr: str = ""


@dataclass(frozen=True)
class Step:
    source: str
    path: str
    conditional: bool = False  # '?' or 'try': errors become data for the following conditions
    condition: Condition | None = None
    method: str | None = None
    body_path: str | None = None
    url: str | None = None  # None: an empty request, the message passes on
    rename: str | None = None
    retryable: bool = False  # '!retry' suffix: may run again after a lost worker even if unsafe

    @property
    def safe(self) -> bool:
        return self.url is None or self.method in SAFE_METHODS or self.retryable


@dataclass(frozen=True)
class Splitter:
    kind: str
    path: str


@dataclass(frozen=True)
class Joiner:
    kind: str
    path: str


@dataclass(frozen=True)
class Transform:
    spec: Any
    path: str


@dataclass(frozen=True)
class Pipeline:
    elements: tuple[Element, ...]
    path: str
    mode: Mode | None = None  # None: the default for where it stands

    @property
    def test(self) -> Condition | None:
        """A subpipeline's test: the condition of its first step."""
        first = self.elements[0] if self.elements else None
        return first.condition if isinstance(first, Step) else None

    @property
    def safe(self) -> bool:
        return all(e.safe if isinstance(e, Step | Pipeline) else True for e in self.elements)


Element = Step | Pipeline | Splitter | Joiner | Transform


@dataclass(frozen=True)
class Spec:
    """A parsed pipeline with its initializers."""

    pipeline: Pipeline
    target_host: str | None = None
    concurrency: int | None = None
    trace: bool = False
    hosts: frozenset[str] = field(default_factory=frozenset)  # hosts of absolute URLs named in steps

    @property
    def safe(self) -> bool:
        return self.pipeline.safe


@dataclass(frozen=True)
class Limits:
    max_elements: int = 1000
    max_depth: int = 32
    max_concurrency: int = 64


def parse(spec: Any, limits: Limits = Limits()) -> Spec:
    """A Spec from JSON; SpecError (with the element's path) when anything is wrong."""
    if not isinstance(spec, list):
        raise SpecError("$", f"a pipeline is a JSON list, not {_kind(spec)}")
    count = _count(spec, 0, limits)
    if count > limits.max_elements:
        raise SpecError("$", f"{count} elements is over the limit of {limits.max_elements}")
    target_host: str | None = None
    concurrency: int | None = None
    trace = False
    start = 0
    for i, item in enumerate(spec):
        if not isinstance(item, str) or item.split(" ", 1)[0] not in INITIALIZERS:
            break
        word, _, arg = item.strip().partition(" ")
        path = f"$[{i}]"
        arg = arg.strip()
        if word == "targetHost":
            parts = urlsplit(arg)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
                raise SpecError(path, f"targetHost needs a scheme and a host, like https://example.com, not {arg!r}")
            target_host = f"{parts.scheme}://{parts.netloc}"
        elif word == "concurrency":
            if not arg.isdigit() or not 1 <= int(arg) <= limits.max_concurrency:
                raise SpecError(path, f"concurrency needs a whole number from 1 to {limits.max_concurrency}, not {arg!r}")
            concurrency = int(arg)
        else:
            if arg:
                raise SpecError(path, "trace takes no argument")
            trace = True
        start = i + 1
    hosts: set[str] = set()
    pipeline = _pipeline(spec[start:], "$", start, top=True, hosts=hosts)
    return Spec(pipeline, target_host, concurrency, trace, frozenset(hosts))


def _count(spec: Any, depth: int, limits: Limits) -> int:
    if depth > limits.max_depth:
        raise SpecError("$", f"subpipelines nest deeper than {limits.max_depth}")
    if isinstance(spec, list):
        return 1 + sum(_count(s, depth + 1, limits) for s in spec)
    return 1


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _pipeline(items: list[Any], path: str, offset: int, top: bool, hosts: set[str]) -> Pipeline:
    mode: Mode | None = None
    elements: list[Element] = []
    for j, item in enumerate(items):
        i = j + offset
        here = f"{path}[{i}]"
        if isinstance(item, list):
            elements.append(_pipeline(item, here, 0, top=False, hosts=hosts))
        elif isinstance(item, dict):
            _check_transform(item, here)
            elements.append(Transform(item, here))
        elif isinstance(item, str):
            word = item.strip().split(" ", 1)[0] if item.strip() else ""
            if word in MODES:
                if elements:
                    raise SpecError(here, f"the mode directive {item!r} must be the first element of its pipeline")
                mode = _mode(item, here)
            elif word in SPLITTERS and item.strip() == word:
                elements.append(Splitter(word, here))
            elif word in JOINERS and item.strip() == word:
                elements.append(Joiner(word, here))
            elif word in INITIALIZERS:
                raise SpecError(here, f"{word} is an initializer: it may only come at the start of the top-level pipeline")
            else:
                step = parse_step(item, here)
                if step.url and "://" in step.url:
                    host = urlsplit(step.url).hostname
                    if host and "$" not in host:
                        hosts.add(host.lower())
                elements.append(step)
        else:
            raise SpecError(here, f"an element is a string, a list or an object, not {_kind(item)}")
    return Pipeline(tuple(elements), path, mode)


def _mode(text: str, path: str) -> Mode:
    words = text.split()
    kind = words[0]
    if kind in ("tee", "teeWait"):
        if len(words) > 1:
            raise SpecError(path, f"{kind} takes no actions")
        return Mode(kind)
    if len(words) > 3:
        raise SpecError(path, f"a mode is '<serial|parallel|conditional> [fail action] [succeed action]', not {text!r}")
    defaults = ("next", "end") if kind == "conditional" else ("next", "next")
    actions = words[1:] + list(defaults[len(words) - 1 :])
    for label, action in zip(("fail", "succeed"), actions, strict=True):
        if action not in ACTIONS:
            raise SpecError(path, f"unknown {label} action {action!r}: use next, end or stop")
    return Mode(kind, actions[0], actions[1])


_IF = re.compile(r"^if\s*\(")
_SEED_CONDITION = re.compile(r"^(:|#|!)")
_URLISH = re.compile(r"^(/|https?://|\$)")


def _balanced(text: str, start: int, path: str) -> int:
    """Index just past the parenthesis that closes the one at `start` (quotes respected)."""
    depth = 0
    quote: str | None = None
    i = start
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"`":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise SpecError(path, "the condition 'if (' has no closing parenthesis")


def parse_condition(token: str, path: str) -> Condition:
    """A seed condition: `:<mime>`, `#<name>` or `!<codes>[:<text>]`."""
    if token.startswith(":"):
        mime = token[1:].strip().lower()
        if not mime:
            raise SpecError(path, "the condition ':' needs a mime type (json, text, binary or type/subtype)")
        return Condition("mime", mime=mime)
    if token.startswith("#"):
        if len(token) == 1:
            raise SpecError(path, "the condition '#' needs a message name")
        return Condition("name", name=token[1:])
    codes, _, text = token[1:].partition(":")
    ranges: list[tuple[int, int]] = []
    for part in filter(None, codes.split(",")):
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise SpecError(path, f"error condition {token!r}: {part!r} is not a status code or range like 500-599")
        ranges.append((int(lo), int(hi) if dash else int(lo)))
    return Condition("error", ranges=tuple(ranges), text=unquote_plus(text))


def parse_step(text: str, path: str) -> Step:
    """One step string in either spelling."""
    rest = text.strip()
    conditional = False
    condition: Condition | None = None
    if rest.startswith("? ") or rest == "?":
        conditional, rest = True, rest[1:].strip()
    elif rest.startswith("try ") or rest == "try":
        conditional, rest = True, rest[3:].strip()
    if _IF.match(rest):
        end = _balanced(rest, rest.index("("), path)
        expr = rest[rest.index("(") + 1 : end - 1].strip()
        try:
            expressions.check(expr)
        except ExpressionError as exc:
            raise SpecError(path, f"condition {expr!r}: {exc.reason}") from None
        condition = Condition("expr", expr=expr)
        rest = rest[end:].strip()
    tokens = rest.split()
    retryable = False
    if tokens and tokens[-1] == "!retry":
        retryable = True
        tokens.pop()
    if condition is None and tokens and _SEED_CONDITION.match(tokens[0]):
        first = tokens[0]
        lone_rename = len(tokens) == 1 and first.startswith(":") and not _looks_like_mime(first[1:])
        if not lone_rename:
            condition = parse_condition(first, path)
            tokens.pop(0)
    method: str | None = None
    body_path: str | None = None
    url: str | None = None
    rename: str | None = None
    if tokens and tokens[0].upper() in METHODS and tokens[0] not in ("$method",):
        method = "$METHOD" if tokens[0] == "$METHOD" else tokens[0].upper()
        tokens.pop(0)
        if len(tokens) >= 2 and "/" not in tokens[0] and _URLISH.match(tokens[1]) and not _is_rename(tokens[0]):
            body_path = tokens.pop(0)
        if not tokens:
            raise SpecError(path, f"step {text!r}: the method {method} needs a URL after it")
    if tokens and not _is_rename(tokens[0]):
        candidate = tokens.pop(0)
        if not _URLISH.match(candidate):
            raise _not_a_step(candidate, text, path)
        url = candidate
    if tokens and _is_rename(tokens[0]):
        rename = tokens.pop(0)[1:]
        if not rename:
            raise SpecError(path, f"step {text!r}: a rename needs a name after '~' or ':'")
    if tokens:
        raise SpecError(path, f"step {text!r}: unexpected {tokens[0]!r} (a step is "
                              "'[?|try] [condition] [METHOD [bodyPath]] url [~name]')")
    if url is not None and method is None:
        method = "POST"
    if url is not None and "://" in url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SpecError(path, f"step {text!r}: {url!r} is not an http(s) URL")
    return Step(text, path, conditional, condition, method, body_path, url, rename, retryable)


def _looks_like_mime(word: str) -> bool:
    return word.lower() in ("json", "text", "binary") or "/" in word


def _is_rename(token: str) -> bool:
    return token.startswith("~") or (token.startswith(":") and not token.startswith("://"))


def _not_a_step(word: str, text: str, path: str) -> SpecError:
    for kind, names in (("mode", MODES), ("splitter", SPLITTERS), ("joiner", JOINERS),
                        ("initializer", INITIALIZERS)):
        close = difflib.get_close_matches(word, names, n=1, cutoff=0.75)
        if close:
            return SpecError(path, f"unknown {kind} {word!r} (did you mean {close[0]!r}?)")
    if word.upper() != word and word[:1].isalpha() and " " not in text.strip():
        return SpecError(path, f"unknown directive {word!r}: expected a mode, splitter, joiner or a step with a URL")
    return SpecError(path, f"step {text!r}: {word!r} is not a URL (it must start with /, http:// or https://)")


# --- transformations ------------------------------------------------------------------------------

_KEY_PATH = re.compile(r"^[^.\[{]+(\.[^.\[{]+|\[[^\]]*\]|\{[^}]*\})*$")


def _check_transform(spec: Any, path: str) -> None:
    """Every expression in a transformation must parse (run-time errors are reported at run time)."""
    if isinstance(spec, str):
        try:
            expressions.check(spec)
        except ExpressionError as exc:
            raise SpecError(path, f"transformation expression {spec!r}: {exc.reason}") from None
    elif isinstance(spec, list):
        if spec and isinstance(spec[0], str) and spec[0].endswith("()"):
            for k, arg in enumerate(spec[1:], start=1):
                if isinstance(arg, list | dict):
                    _check_transform(arg, f"{path}[{k}]")
            return
        for k, item in enumerate(spec):
            _check_transform(item, f"{path}[{k}]")
    elif isinstance(spec, dict):
        for key, value in spec.items():
            here = f"{path}.{key}" if re.fullmatch(r"[A-Za-z_$][\w$]*", key) else f"{path}[{key!r}]"
            if key not in ("$", "$this", ".") and not key.startswith("$") and not _KEY_PATH.match(key):
                raise SpecError(here, f"transformation key {key!r} is not a property path")
            _check_transform(value, here)
