"""What-if switches for the benchmarks: changes to the services patched in at start-up, to measure
a suggestion before making it. Put this directory on the skyjobs processes' PYTHONPATH and set the
switches, e.g.

    python -m bench.throughput --env PYTHONPATH=$PWD/bench/whatif --env BENCH_WHATIF=spawn

BENCH_WHATIF is a comma-separated list of:
  spawn           the executor spawns `prlimit ... -- setpriv ... -- /bin/sh -c <command>` without
                  preexec_fn (CPython can then vfork), on the stdlib event loop (uvloop always forks)
                  with a pidfd child watcher (no thread per child)
  kafka-commit-bg the projector commits its Kafka offsets in the background, at most once a second
  pg-async        the projector's Postgres sessions use synchronous_commit=off
Nothing here is used unless BENCH_WHATIF is set.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

WHATIF = set(filter(None, os.environ.get("BENCH_WHATIF", "").split(",")))
PROCESS = sys.argv[-1] if sys.argv[:1] == ["-m"] else ""  # `python -m services.cli <process>`

if "spawn" in WHATIF and PROCESS == "worker":
    import mode.loop

    mode.loop.use = lambda *args, **kwargs: None  # keep the worker on the stdlib loop
    _create = asyncio.create_subprocess_exec
    _watcher: dict[str, Any] = {}

    async def _spawn(program: str, *args: Any, preexec_fn: Any = None, user: Any = None, group: Any = None,
                     extra_groups: Any = None, **kwargs: Any) -> Any:
        if "w" not in _watcher:
            watcher = asyncio.PidfdChildWatcher()
            watcher.attach_loop(asyncio.get_running_loop())
            asyncio.get_event_loop_policy().set_child_watcher(watcher)
            _watcher["w"] = watcher
        if program != "/bin/sh" or args[:1] != ("-c",):
            return await _create(program, *args, preexec_fn=preexec_fn, user=user, group=group,
                                 extra_groups=extra_groups, **kwargs)
        from services.config import from_env

        config = from_env()
        limits = config.job_limits
        argv = ["/usr/bin/prlimit"]
        for flag, value in (("cpu", limits.cpu_seconds), ("as", limits.memory_bytes),
                            ("fsize", limits.file_size_bytes), ("nproc", limits.processes)):
            if value > 0:
                argv.append(f"--{flag}={value}")
        argv += ["--", "/usr/bin/setpriv", "--pdeathsig=KILL"]
        if os.geteuid() == 0:
            import pwd

            who = pwd.getpwnam(config.job_user)
            argv += [f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--clear-groups"]
        return await _create(*argv, "--", program, *args, **kwargs)

    asyncio.create_subprocess_exec = _spawn

if "kafka-commit-bg" in WHATIF and PROCESS == "projector":
    from aiokafka import AIOKafkaConsumer

    _commit = AIOKafkaConsumer.commit
    _last = {"at": 0.0}

    async def _commit_in_background(self: Any, *args: Any, **kwargs: Any) -> None:
        now = time.monotonic()
        if now - _last["at"] >= 1.0:
            _last["at"] = now
            task = asyncio.ensure_future(_commit(self, *args, **kwargs))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    AIOKafkaConsumer.commit = _commit_in_background  # type: ignore[method-assign]

if "pg-async" in WHATIF and PROCESS == "projector" and "SKYJOBS_DATABASE_URL" in os.environ:
    url = os.environ["SKYJOBS_DATABASE_URL"]
    os.environ["SKYJOBS_DATABASE_URL"] = url + ("&" if "?" in url else "?") + "synchronous_commit=off"
