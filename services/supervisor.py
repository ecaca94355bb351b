"""Runs skyjobs processes as children with prefixed logs; used by `skyjobs dev` and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import TextIO

_COLOURS = itertools.cycle(["\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m"])
_RESET = "\033[0m"


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    restart: bool = True
    process: asyncio.subprocess.Process | None = None
    colour: str = field(default_factory=lambda: next(_COLOURS))
    task: asyncio.Task[None] | None = None


class Supervisor:
    """Starts children, prefixes their output, restarts them if they die, stops them in reverse order."""

    def __init__(self, colour: bool | None = None, out: TextIO | None = None) -> None:
        self.children: dict[str, Child] = {}
        self.colour = sys.stdout.isatty() if colour is None else colour
        self.stopping = False
        self.out = out or sys.stdout

    def echo(self, name: str, line: str, colour: str = "") -> None:
        prefix = f"{name:>9} | "
        if self.colour and colour:
            prefix = f"{colour}{prefix}{_RESET}"
        self.out.write(prefix + line.rstrip("\n") + "\n")
        self.out.flush()

    async def start(self, name: str, argv: list[str], env: dict[str, str] | None = None, restart: bool = True) -> Child:
        child = Child(name, argv, {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}, restart)
        self.children[name] = child
        await self._spawn(child)
        child.task = asyncio.ensure_future(self._watch(child))
        return child

    async def _spawn(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            *child.argv, env=child.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )

    async def _watch(self, child: Child) -> None:
        while True:
            assert child.process is not None and child.process.stdout is not None
            async for raw in child.process.stdout:
                self.echo(child.name, raw.decode(errors="replace"), child.colour)
            code = await child.process.wait()
            if self.stopping or not child.restart:
                self.echo(child.name, f"exited with code {code}", child.colour)
                return
            self.echo(child.name, f"exited with code {code}; restarting in 1 s", child.colour)
            await asyncio.sleep(1)
            if self.stopping:
                return
            await self._spawn(child)

    def kill(self, name: str) -> int:
        """SIGKILL a child's whole process group (fault tests); it is restarted only if restart=True."""
        child = self.children[name]
        assert child.process is not None
        pid = child.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        return pid

    async def stop_child(self, name: str, timeout: float = 20) -> None:
        child = self.children.pop(name)
        child.restart = False
        if child.process is not None and child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(child.process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                await child.process.wait()
        if child.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(child.task, 5)

    async def stop(self) -> None:
        self.stopping = True
        for name in reversed(list(self.children)):
            await self.stop_child(name)
