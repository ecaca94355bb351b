"""How messages move through a pipeline: a token machine, pure (no I/O, no clock).

A run is a set of *tokens*. A token is one message at one place in the spec: a stack of frames,
one per (sub)pipeline the message is inside, each holding the index of the next element to apply.

    flow = Flow(spec, caller, settings)
    outcomes = flow.advance(token)          # until the token needs the outside world
    outcomes = flow.after_call(call, responses)

`advance` applies transformations, conditions, modes and local joins, and stops at:

- `Call`: a step wants HTTP requests (`after_call` continues with the responses);
- `Fork`: the token became several (parallel branches, split parts, `${list[]}` requests, a tee):
  each child is a token of its own, run wherever its key lands;
- `Arrival`: the message reached an accounting point: a joiner, the end of a `teeWait`
  subpipeline or the end of the run; with `message=None` it is a *nothing-part*, the share of a
  message that was dropped or left early, so the point still knows it will not come;
- `Failed`: the run fails with this message (status >= 300, unless a conditional step caught it).

Joiners wait for exactly the messages sent towards them: every frame carries the token's
*credit*, its share (a fraction) of that frame's scope; a fork divides the credits of every frame
between the children, and an accounting point is complete when the credits that arrived sum to 1.
A token that still holds credit 1 at a joiner is the only message of its scope: it joins at once,
without waiting. The request budget (requests per run) is shared the same way: a fork splits what
is left between the children, a join adds up what the parts had left.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import msgspec
import orjson

from events.pipelines import Frame
from services.pipelines import parts
from services.pipelines.conditions import ConditionContext, passes
from services.pipelines.errors import ExpressionError, LimitExceeded, PipelineError
from services.pipelines.expressions import Budget
from services.pipelines.messages import Message, error_message, from_error_body, is_error_body, to_error_body
from services.pipelines.spec import Element, Joiner, Mode, Pipeline, Spec, Splitter, Step, Transform
from services.pipelines.transform import TransformContext, transform
from services.pipelines.urls import PatternError, UrlContext, json_path, normalise, resolve

DEPTH_HEADER = "x-skyjobs-pipeline-depth"
RUN_HEADER = "x-skyjobs-pipeline-run"
END = "end"  # the accounting point of the run's end
AFTER = 2**31  # the last place in an order key: a joined message's, after the parts it was made of
ONE = "1"


@dataclass(frozen=True)
class Settings:
    """Guards of every run (SKYJOBS_PIPELINE_*)."""

    self_url: str = "http://127.0.0.1:8000"  # where site-relative URLs go without a targetHost
    allowed_hosts: frozenset[str] = frozenset()  # besides the self host and the targetHost
    step_timeout: float = 30.0
    run_timeout: float = 120.0
    max_body: int = 10 * 1024**2
    max_fanout: int = 100  # messages one splitter, parallel pipeline or ${list[]} may make
    max_steps: int = 1000  # requests per run
    expression_steps: int = 200_000
    expression_seconds: float = 1.0
    expression_memory: int = 1_000_000
    max_depth: int = 8  # pipelines calling pipelines
    inline_limit: int = 64 * 1024  # larger bodies travel through the blob store, never inline in Kafka

    def budget(self) -> Budget:
        return Budget(self.expression_steps, self.expression_seconds, self.expression_memory)


@dataclass(frozen=True)
class Caller:
    """The request that invoked the pipeline."""

    method: str = "GET"
    base_path: str = ""
    service_path: str = ""
    query: tuple[tuple[str, str], ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    user: Any = None
    depth: int = 0


@dataclass
class Token:
    """One message at one place of a run. `pending` is an action still to apply to the top frame
    (what a step's or a subpipeline's output does next: next, end or stop, with the conditional flag)."""

    token_id: str
    frames: list[Frame]
    message: Message
    variables: dict[str, Any] = field(default_factory=dict)
    budget: int = 1000
    tracked: bool = True  # a tee's side branch is not: nothing waits for it
    order: tuple[int, ...] = ()  # fan-out indices since the run started: joins order their parts by it
    pending: tuple[str, bool] | None = None


@dataclass
class Request:
    """One HTTP request of a step, ready to send (or already answered: `immediate`)."""

    key: str  # unique in the run: the token, the element and the index of the request
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    output_name: str
    immediate: Message | None = None  # refused before sending (host not allowed, URL pattern error)


@dataclass
class Call:
    token: Token
    step: Step
    conditional: bool
    succeed: str
    requests: list[Request]


@dataclass
class Fork:
    parent: Token
    element: str  # the spec path of what forked
    kind: str  # parallel | split | list | tee
    tokens: list[Token]


@dataclass
class Arrival:
    """A message (or the share of one that will not come: message None) at an accounting point."""

    token: Token
    point: str  # "<scope>#<index>", or END
    kind: str  # jsonObject | multipart | zip (joiners), wait (a teeWait's end), end (the run's end)
    level: int  # the frame whose scope the point belongs to; its credit is the arrival's share
    message: Message | None
    passes: bool = True  # False for a notice: the share went on with a message that skipped the point

    @property
    def credit(self) -> Fraction:
        return Fraction(self.token.frames[self.level].credit)


@dataclass
class Failed:
    token: Token
    message: Message


Outcome = Call | Fork | Arrival | Failed


class Failure(Exception):
    def __init__(self, message: Message) -> None:
        super().__init__(f"{message.status} {message.error_message()}")
        self.message = message


def short_id(*parts: object) -> str:
    """A deterministic id (16 hex digits): redelivered work makes the same ids again."""
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).hexdigest()


@lru_cache(maxsize=64)
def mode_of(text: str) -> Mode:
    kind, fail, succeed = text.split(" ")
    return Mode(kind, fail, succeed)


def mode_text(mode: Mode) -> str:
    return f"{mode.kind} {mode.fail} {mode.succeed}"


def default_child_mode(parent: Mode, conditional: bool) -> Mode:
    if parent.kind == "parallel" or conditional or parent.kind == "conditional":
        return Mode("serial")
    return Mode("parallel")


_CONDITIONAL = Mode("conditional", "next", "end")


def index_pipelines(p: Pipeline, out: dict[str, Pipeline] | None = None) -> dict[str, Pipeline]:
    out = {} if out is None else out
    out[p.path] = p
    for e in p.elements:
        if isinstance(e, Pipeline):
            index_pipelines(e, out)
    return out


def _origin(url: str | None) -> str:
    if not url:
        return ""
    split = urlsplit(url)
    port = split.port or (443 if split.scheme == "https" else 80)
    return f"{split.scheme}://{(split.hostname or '').lower()}:{port}"


def _copy_frames(frames: list[Frame]) -> list[Frame]:
    return [msgspec.structs.replace(f) for f in frames]


def _base(scope: str, point_kind: str, method: str) -> Frame:
    """A frame with no elements under a scope whose end is an accounting point (the run's, a teeWait's)."""
    return Frame(path="", index=0, stop=0, kind="base", mode="serial next next", conditional=False, skip_test=False,
                 scope=scope, credit=ONE, exit=point_kind, exit_conditional=False, method=method)


def root_token(spec: Spec, message: Message, settings: Settings) -> Token:
    """The first token of a run: the caller's message at the start of the top-level pipeline."""
    top = spec.pipeline
    mode = top.mode or Mode("serial")
    if mode.kind in ("serial", "conditional"):
        root = Frame(path=top.path, index=0, stop=len(top.elements), kind="serial", mode=mode_text(mode),
                     conditional=mode.kind == "conditional", skip_test=False, scope="run", credit=ONE, exit="next",
                     exit_conditional=False, method=message.method)
    else:  # a parallel or tee top level: the one element of a serial root ("^")
        root = Frame(path="^", index=0, stop=1, kind="serial", mode="serial next next", conditional=False,
                     skip_test=True, scope="run", credit=ONE, exit="next", exit_conditional=False,
                     method=message.method)
    return Token("r", [_base(END, END, message.method), root], message, budget=settings.max_steps)


class Flow:
    """The pure semantics of one run's spec (shared by every token of the run)."""

    def __init__(self, spec: Spec, caller: Caller, settings: Settings, run_id: str = "") -> None:
        self.spec = spec
        self.caller = caller
        self.settings = settings
        self.run_id = run_id
        self.paths = index_pipelines(spec.pipeline)
        # a top-level parallel/tee pipeline runs as the only element of a synthetic serial root
        self.paths["^"] = Pipeline((spec.pipeline,), "^", Mode("serial"))
        self.self_origin = _origin(settings.self_url)
        self.self_host = (urlsplit(settings.self_url).hostname or "").lower()
        allowed = set(settings.allowed_hosts) | {self.self_host}
        if spec.target_host:
            allowed.add((urlsplit(spec.target_host).hostname or "").lower())
        self.allowed = frozenset(allowed)
        self.trusted = _origin(spec.target_host) if spec.target_host else self.self_origin
        self.segments = [s for s in caller.service_path.split("/") if s]

    # --- entry points -----------------------------------------------------------------------------

    def advance(self, token: Token) -> list[Outcome]:
        """Move `token` on until it needs a request, forks, arrives, fails or vanishes."""
        out: list[Outcome] = []
        try:
            self._advance(token, out)
        except Failure as failure:
            out.append(Failed(token, failure.message))
        except PipelineError as exc:
            out.append(Failed(token, error_message(exc.status, exc.message)))
        return out

    def after_call(self, call: Call, responses: list[Message]) -> list[Outcome]:
        """The step's responses: each becomes the message that goes on (a fork when there are several)."""
        token, step = call.token, call.step
        try:
            outputs: list[Message] = []
            fanned = step.url is not None and "[]" in step.url
            for k, response in enumerate(responses):
                source = token.message.renamed(str(k)) if fanned else token.message
                outputs.append(self._settle(token, step, source, response, call.conditional))
        except Failure as failure:
            return [Failed(token, failure.message)]
        except PipelineError as exc:
            return [Failed(token, error_message(exc.status, exc.message))]
        return self._continue_with(token, outputs, call.succeed, call.conditional, step.path, "list")

    # --- the machine ------------------------------------------------------------------------------

    def _continue_with(self, token: Token, outputs: list[Message], action: str, conditional: bool,
                       where: str, kind: str) -> list[Outcome]:
        if len(outputs) == 1:
            token.message = outputs[0]
            token.pending = (action, conditional)
            return self.advance(token)
        children = self._fork(token, outputs)
        for child in children:
            child.pending = (action, conditional)
        return [Fork(token, where, kind, children)]

    def _fork(self, token: Token, messages: list[Message]) -> list[Token]:
        """Children of `token`, one per message, sharing its credits and budget."""
        k = len(messages)
        if k > self.settings.max_fanout:
            raise LimitExceeded(f"{k} messages at once is over the fan-out limit of {self.settings.max_fanout}")
        share, extra = divmod(token.budget, k)
        children = []
        for i, m in enumerate(messages):
            frames = _copy_frames(token.frames)
            for f in frames:
                f.credit = str(Fraction(f.credit) / k)
            children.append(Token(short_id(token.token_id, i), frames, m, dict(token.variables),
                                  share + (1 if i < extra else 0), token.tracked, (*token.order, i)))
        return children

    def _advance(self, t: Token, out: list[Outcome]) -> None:
        while True:
            if t.pending is not None:
                action, conditional = t.pending
                t.pending = None
                if not self._act(t, action, conditional, out):
                    return
                continue
            f = t.frames[-1]
            if f.index >= f.stop:
                if not self._exit(t, out):
                    return
                continue
            p = self.paths[f.path]
            e = p.elements[f.index]
            if isinstance(e, Joiner):
                if f.kind == "single" or Fraction(f.credit) == 1:
                    joined = parts.join(e.kind, [t.message])
                    joined.method = f.method
                    t.message = joined
                    f.index += 1
                    continue
                out.append(Arrival(t, f"{f.scope}#{f.index}", e.kind, len(t.frames) - 1, t.message))
                return
            if isinstance(e, Splitter):
                pieces = parts.split(e.kind, t.message, self.settings.max_fanout, self.settings.max_body)
                f.index += 1
                if len(pieces) == 1:
                    t.message = pieces[0]
                    continue
                out.append(Fork(t, e.path, "split", self._fork(t, pieces)))
                return
            if isinstance(e, Transform):
                t.message = self._transform(t, e)
                f.index += 1
                continue
            effective = _CONDITIONAL if f.conditional else mode_of(f.mode)
            skip, f.skip_test = f.skip_test, False
            if not skip and not self._test(t, e, t.message):
                if effective.fail == "stop":
                    self._drop(t, out)
                    return
                if effective.fail == "end":
                    if not self._leave(t, out):
                        return
                    continue
                f.index += 1
                continue
            assert isinstance(e, Step | Pipeline)
            if isinstance(e, Step):
                now_conditional = f.conditional or e.conditional
                succeed = "next" if e.conditional and not f.conditional else effective.succeed
                call = self._prepare(t, e, now_conditional, succeed)
                if isinstance(call, Call):
                    out.append(call)
                    return
                t.message, t.pending = call, (succeed, now_conditional)
                continue
            # a subpipeline: its outputs come back here with the succeed action
            child_mode = e.mode or (Mode("serial") if f.kind == "single" else default_child_mode(mode_of(f.mode),
                                                                                                 f.conditional))
            if not self._enter(t, e, child_mode, effective.succeed, f.conditional, True, out):
                return

    def _act(self, t: Token, action: str, conditional: bool, out: list[Outcome]) -> bool:
        """Apply an output's action at the top frame; False when the token went away."""
        f = t.frames[-1]
        if action == "stop":
            self._drop(t, out)
            return False
        if f.kind == "base":
            return self._at_base(t, out)
        f.conditional = conditional
        if action == "end":
            return self._leave(t, out)
        f.index += 1
        return True

    def _enter(self, t: Token, p: Pipeline, mode: Mode, exit: str, exit_conditional: bool, skip_test: bool,
               out: list[Outcome]) -> bool:
        """The message goes into subpipeline `p`; False when the token stopped here (forked, etc.)."""
        if mode.kind == "parallel":
            if len(p.elements) > self.settings.max_fanout:
                raise LimitExceeded(f"{p.path}: {len(p.elements)} parallel branches is over the limit of "
                                    f"{self.settings.max_fanout}")
            chosen = []
            for j, element in enumerate(p.elements):
                copy = t.message.renamed(str(j))
                if self._test(t, element, copy):
                    chosen.append((j, copy))
            if not chosen:
                self._drop(t, out)
                return False
            children = [t] if len(chosen) == 1 else self._fork(t, [m for _, m in chosen])
            for child, (j, copy) in zip(children, chosen, strict=True):
                child.message = copy
                child.frames.append(Frame(path=p.path, index=j, stop=j + 1, kind="single", mode="serial next next",
                                          conditional=False, skip_test=True, scope="", credit=ONE, exit=exit,
                                          exit_conditional=exit_conditional, method=t.message.method))
            if len(children) == 1:
                return True
            out.append(Fork(t, p.path, "parallel", children))
            return False
        if mode.kind in ("tee", "teeWait"):
            scope = short_id(t.token_id, p.path)
            side = Frame(path=p.path, index=0, stop=len(p.elements), kind="serial", mode="serial next next",
                         conditional=False, skip_test=False, scope=scope, credit=ONE, exit="next",
                         exit_conditional=False, method=t.message.method)
            if mode.kind == "teeWait":
                base = _base(scope, "wait", t.message.method)
                base.after, base.after_conditional, base.original = exit, exit_conditional, t.message
                t.frames += [base, side]
                t.message = t.message.copy()
                return True
            # the side branch is untracked (nothing waits for it): the main message keeps every credit
            side.exit = "discard"
            half = t.budget // 2
            tee = Token(short_id(t.token_id, p.path, "tee"), [*_copy_frames(t.frames), side], t.message.copy(),
                        dict(t.variables), half, False, (*t.order, 1))
            t.budget -= half
            out.append(Fork(t, p.path, "tee", [tee]))
            t.pending = (exit, exit_conditional)
            return True
        t.frames.append(Frame(path=p.path, index=0, stop=len(p.elements), kind="serial", mode=mode_text(mode),
                              conditional=mode.kind == "conditional", skip_test=skip_test,
                              scope=short_id(t.token_id, p.path), credit=ONE, exit=exit,
                              exit_conditional=exit_conditional, method=t.message.method))
        return True

    def _exit(self, t: Token, out: list[Outcome]) -> bool:
        """The top frame ran out of elements: the message leaves it."""
        f = t.frames[-1]
        if f.kind == "base":
            return self._at_base(t, out)
        if f.kind == "serial" and f.conditional and is_error_body(t.message):
            raise Failure(from_error_body(t.message))
        return self._apply_exit(t, out)

    def _leave(self, t: Token, out: list[Outcome]) -> bool:
        """The message leaves the top frame before its end (an `end` action)."""
        f = t.frames[-1]
        if f.kind == "serial":
            if f.conditional and is_error_body(t.message):
                raise Failure(from_error_body(t.message))
            ahead = self._joiners_after(f)
            if t.tracked and ahead:
                # The joiner ahead will not get this message: it gets a notice of its share. A joiner
                # still makes one message, so the notice takes half of the token's credits below this
                # scope on to it: the joined message and this one both count where they end up.
                notice = Token(t.token_id, _copy_frames(t.frames), t.message, {}, 0, True, t.order)
                for lower, mine in zip(notice.frames[:-1], t.frames[:-1], strict=True):
                    half = str(Fraction(mine.credit) / 2)
                    lower.credit = mine.credit = half
                out.append(Arrival(notice, f"{f.scope}#{ahead[0]}", self._joiner_kind(f, ahead[0]),
                                   len(t.frames) - 1, None, passes=False))
        return self._apply_exit(t, out)

    def _apply_exit(self, t: Token, out: list[Outcome]) -> bool:
        f = t.frames[-1]
        if f.exit == "discard":
            return False
        t.frames.pop()
        return self._act(t, f.exit, f.exit_conditional, out)

    def _at_base(self, t: Token, out: list[Outcome]) -> bool:
        """The message reached the end of a run or of a teeWait's side branch."""
        f = t.frames[-1]
        level = len(t.frames) - 1
        if f.exit == END:
            out.append(Arrival(t, END, END, level, t.message))
            return False
        if Fraction(f.credit) == 1:
            return self.resume_wait(t)
        out.append(Arrival(t, f"{f.scope}#wait", "wait", level, None))
        return False

    def resume_wait(self, t: Token) -> bool:
        """A teeWait's side branch ended: the original message goes on."""
        f = t.frames.pop()
        assert f.original is not None
        t.message = f.original if isinstance(f.original, Message) else t.message
        t.pending = (f.after or "next", f.after_conditional)
        return True

    def _drop(self, t: Token, out: list[Outcome]) -> None:
        """The message goes no further: the first accounting point below it gets its share."""
        if not t.tracked:
            return
        for level in range(len(t.frames) - 1, -1, -1):
            f = t.frames[level]
            if f.kind == "base":
                point = END if f.exit == END else f"{f.scope}#wait"
                out.append(Arrival(self._cut(t, level), point, END if f.exit == END else "wait", level, None))
                return
            if f.kind == "serial":
                ahead = self._joiners_after(f)
                if ahead:
                    out.append(Arrival(self._cut(t, level), f"{f.scope}#{ahead[0]}", self._joiner_kind(f, ahead[0]),
                                       level, None))
                    return
        raise AssertionError("the run's base frame is always an accounting point")

    @staticmethod
    def _cut(t: Token, level: int) -> Token:
        return Token(t.token_id, t.frames[: level + 1], t.message, t.variables, t.budget, t.tracked, t.order)

    def _joiners_after(self, f: Frame) -> list[int]:
        elements = self.paths[f.path].elements
        return [k for k in range(f.index + 1, f.stop) if isinstance(elements[k], Joiner)]

    def _joiner_kind(self, f: Frame, index: int) -> str:
        e = self.paths[f.path].elements[index]
        assert isinstance(e, Joiner)
        return e.kind

    # --- elements ---------------------------------------------------------------------------------

    def _context(self, t: Token) -> ConditionContext:
        c = self.caller
        return ConditionContext(c.method, self.segments, c.service_path.endswith("/"), c.user, t.variables)

    def url_context(self, t: Token) -> UrlContext:
        c = self.caller
        return UrlContext(c.method, c.base_path, c.service_path, c.query, t.variables)

    def _test(self, t: Token, element: Element, message: Message) -> bool:
        condition = element.condition if isinstance(element, Step) else element.test if isinstance(
            element, Pipeline) else None
        if condition is None:
            return True
        try:
            return passes(condition, message, self._context(t), self.settings.budget())
        except ExpressionError as exc:
            raise Failure(error_message(400, exc.message)) from None

    def _transform(self, t: Token, element: Transform) -> Message:
        message = t.message
        if message.null:
            return message
        t.variables["$_ok"] = message.ok
        t.variables["$_status"] = message.status
        ctx = TransformContext(self.url_context(t), message.name, t.variables, self.settings.budget())
        try:
            value = transform(element.spec, message.json(), ctx)
        except ExpressionError as exc:
            raise Failure(error_message(400, f"{element.path}: transformation failed: {exc.message}")) from None
        return message.with_json(value)

    def _prepare(self, t: Token, step: Step, conditional: bool, succeed: str) -> Call | Message:
        """The step's requests, or the message that goes on at once (no request to make)."""
        message = t.message
        if message.null or step.url is None:
            return self._rename(step, message, message)
        method = self.caller.method if step.method == "$METHOD" else (step.method or "POST")
        try:
            body_json = message.json() if "${" in step.url else None
            urls = resolve(step.url, self.url_context(t), message.name, body_json)
        except PatternError as exc:
            failed = error_message(500, f"{step.path}: {exc.message}")
            return Call(t, step, conditional, succeed, [Request(f"{t.token_id}:{step.path}:0", method, step.url, {},
                                                                None, step.rename or message.name, failed)])
        if not urls:
            return Message(name=message.name, null=True, method=method)
        if len(urls) > self.settings.max_fanout:
            raise LimitExceeded(f"{step.path}: {len(urls)} requests is over the fan-out limit of "
                                f"{self.settings.max_fanout}")
        if len(urls) > t.budget:
            raise LimitExceeded(f"{step.path}: the run would make more than {self.settings.max_steps} requests "
                                "(the limit per run; a fan-out shares what is left of it between its branches)")
        t.budget -= len(urls)
        requests = [self._request(t, step, method, url, message, k) for k, url in enumerate(urls)]
        return Call(t, step, conditional, succeed, requests)

    def _request(self, t: Token, step: Step, method: str, url: str, message: Message, k: int) -> Request:
        absolute = normalise(url if "://" in url else
                             (self.spec.target_host or self.settings.self_url).rstrip("/") + "/" + url.lstrip("/"))
        key = f"{t.token_id}:{step.path}:{k}"
        name = step.rename or message.name
        host = (urlsplit(absolute).hostname or "").lower()
        if host not in self.allowed:
            return Request(key, method, absolute, {}, None, name,
                           error_message(403, f"{step.path}: the host {host!r} is not on the pipeline allow-list"))
        headers: dict[str, str] = {DEPTH_HEADER: str(self.caller.depth + 1)}
        if self.run_id:
            headers[RUN_HEADER] = self.run_id
        if message.headers.get("content-type"):
            headers["content-type"] = message.headers["content-type"]
        if message.name:
            headers["content-disposition"] = f'form-data; name="{message.name}"'
        auth = self.caller.headers.get("authorization")
        if auth and _origin(absolute) == self.trusted:
            headers["authorization"] = auth
        body: bytes | None = None
        if method not in ("GET", "HEAD", "OPTIONS"):
            if step.body_path:
                found = json_path(message.json(), step.body_path, t.variables)
                body = orjson.dumps(found[0] if len(found) == 1 else found if found else None)
                headers["content-type"] = "application/json"
            else:
                body = message.body
        return Request(key, method, absolute, headers, body, name)

    def _settle(self, t: Token, step: Step, message: Message, response: Message, conditional: bool) -> Message:
        if step.rename and step.rename.startswith("$") and step.rename != "$this":
            t.variables[step.rename] = to_error_body(response).json() if response.failed else response.json()
            return message
        if response.failed:
            if not conditional:
                raise Failure(response)
            response = to_error_body(response)
        response.name = message.name
        return self._rename(step, message, response)

    @staticmethod
    def _rename(step: Step, before: Message, message: Message) -> Message:
        if not step.rename or (step.rename.startswith("$") and step.rename != "$this"):
            return message
        name = (message.name or before.name) + step.rename if step.rename.startswith(".") else step.rename
        out = message.renamed(name)
        out.headers["content-disposition"] = f'form-data; name="{name}"'
        return out


# --- accounting points (pure): what a joiner, a teeWait's end or the run's end holds ----------------


@dataclass
class Point:
    """The parts an accounting point has received: ids (to drop duplicates) and their credit sum.
    A joiner keeps the arrivals; the run's end only its last output (or its first failure)."""

    kind: str
    level: int
    credit: Fraction = Fraction(0)
    received: set[str] = field(default_factory=set)
    arrivals: list[Arrival] = field(default_factory=list)
    last: Message | None = None
    last_order: tuple[int, ...] | None = None  # the run's answer is the last output in spec order
    ended: bool = False

    @property
    def complete(self) -> bool:
        return self.credit >= 1

    def later(self, order: tuple[int, ...]) -> bool:
        """Whether an output of this order comes after the answer so far (in spec order, not in time)."""
        return self.last_order is None or order >= self.last_order

    def add(self, arrival: Arrival) -> bool:
        """Count an arrival; False for a duplicate (a redelivered or re-sent part) or after the end."""
        part_id = arrival.token.token_id + ("" if arrival.passes else "~")
        if self.ended or part_id in self.received:
            return False
        self.received.add(part_id)
        self.credit += arrival.credit
        if self.kind == END:
            if arrival.message is not None and self.later(arrival.token.order):
                self.last, self.last_order = arrival.message, arrival.token.order
        else:
            self.arrivals.append(arrival)
        return True


def joined_token(arrivals: list[Arrival], point: str) -> Token:
    """The token that goes on from a complete joiner (or teeWait end): one message from all the parts."""
    level = arrivals[0].level
    ordered = sorted(arrivals, key=lambda a: a.token.order)
    carriers = [a for a in ordered if a.passes]
    first = ordered[0].token
    frames = _copy_frames(first.frames[: level + 1])
    for i in range(level):  # notices too: each brought half of its token's credit below the scope
        frames[i].credit = str(sum((Fraction(a.token.frames[i].credit) for a in ordered), Fraction(0)))
    top = frames[level]
    top.credit = ONE  # the one message that comes out holds the whole scope again
    variables: dict[str, Any] = {}
    for a in carriers:
        variables.update(a.token.variables)
    budget = sum(a.token.budget for a in carriers)
    # after every part in spec order: what a joiner makes comes after what went into it (or skipped it)
    order = (*max(a.token.order for a in ordered), AFTER)
    token = Token(short_id(point), frames, Message(), variables, budget, True, order)
    if arrivals[0].kind == "wait":
        token.message = top.original if isinstance(top.original, Message) else Message()
        token.frames.pop()
        token.pending = (top.after or "next", top.after_conditional)
        return token
    messages = [a.message for a in ordered if a.message is not None]
    joined = parts.join(arrivals[0].kind, messages)
    joined.method = top.method
    token.message = joined
    top.conditional = any(a.token.frames[level].conditional for a in ordered if a.message is not None)
    top.index = int(point.rsplit("#", 1)[1]) + 1
    top.skip_test = False
    return token


def answer(last: Message | None, first: Message) -> Message:
    """What the caller gets: the last message out (in spec order); 204 when none came out; `{}` for a null."""
    if last is None:
        return first.copy(status=204, body=b"", headers={})
    if last.null:
        return Message(status=200, headers={"content-type": "application/json"}, body=b"{}")
    return last
