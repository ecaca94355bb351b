"""Runs one job's command in its own working directory, process group and resource limits.

The executor only acts: it tells the lifecycle agent what happened through commands (start,
heartbeat, finish) and stores the job's standard output (and standard error, when there is any)
as files. A job's start is reported once it has run for `start_report_delay`; a job that ends
sooner is reported by one `job.finish` alone, which carries its start time (one Kafka round trip less).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from events.base import Command, new_id, utcnow
from events.files import FileStored
from events.jobs import FinishJob, Heartbeat, StartJob
from services.blobs import LocalBlobStore
from services.config import Config, JobLimits
from services.jobs import launch
from services.jobs.lifecycle import Job
from services.kafka import until_acknowledged

log = logging.getLogger(__name__)

SendCommand = Callable[[Command], Awaitable[None]]
PublishFile = Callable[[FileStored], Awaitable[None]]

_INLINE_HASH = 1024 * 1024  # outputs up to this size are hashed on the event loop, bigger ones in a thread


@dataclass
class Running:
    job: Job
    process: subprocess.Popen[bytes] | None = None
    started_at: datetime | None = None
    stop_reason: str | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


class Executor:
    """Holds the jobs running in this process; `run` takes one job from start to finish."""

    def __init__(self, config: Config, blobs: LocalBlobStore, send: SendCommand, publish_file: PublishFile) -> None:
        self.config = config
        self.blobs = blobs
        self.send = send
        self.publish_file = publish_file
        self.executor_id = config.worker_id
        self.running: dict[str, Running] = {}
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam(config.job_user)
        self._launcher = launch.prefix(config.job_limits, self._user, config.data_dir / "bin")
        config.work_dir.mkdir(parents=True, exist_ok=True)
        self._out_dir = config.work_dir / ".out"
        self._out_dir.mkdir(exist_ok=True)
        self._env_path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")

    async def run(self, job: Job) -> None:
        """Run the job, wait for it, store its outputs and report the finish."""
        entry = Running(job)
        self.running[job.job_id] = entry
        try:
            await self._execute(entry)
        finally:
            for timer in entry.timers:
                timer.cancel()
            self.running.pop(job.job_id, None)

    async def _execute(self, entry: Running) -> None:
        job = entry.job
        workspace = self.config.work_dir / job.job_id
        out_path = self._out_dir / f"{job.job_id}.{job.attempt}.out"
        err_path = self._out_dir / f"{job.job_id}.{job.attempt}.err"
        exit_code: int | None = None
        error: str | None = None
        loop = asyncio.get_running_loop()
        entry.started_at = utcnow()
        try:
            self._prepare(job, workspace)
            if entry.stop_reason is None:
                exited = loop.create_future()
                entry.process = self._spawn(job, workspace, out_path, err_path)
                pidfd = os.pidfd_open(entry.process.pid)
                loop.add_reader(pidfd, _resolve, exited)
                entry.timers.append(loop.call_later(self.config.start_report_delay, self._report_start, entry))
                try:
                    await exited
                finally:
                    loop.remove_reader(pidfd)
                    os.close(pidfd)
                # The job is over when its shell is: what it left running in its process group goes
                # too (sent while the exited shell, not yet reaped, still holds the group's id).
                _signal_group(entry.process.pid, signal.SIGKILL)
                returncode = entry.process.wait()
                exit_code, error = _describe_exit(returncode, entry.stop_reason, self.config.job_limits)
            else:
                error = entry.stop_reason
        except _MissingInput as exc:
            error = str(exc)
        except OSError as exc:
            error = f"could not start the job: {exc}"
        stdout = await self._store_output(job, out_path, "stdout", keep_empty=True)
        stderr = await self._store_output(job, err_path, "stderr", keep_empty=False)
        _remove_tree(workspace)
        finish = FinishJob(
            command_id=new_id(), stream_id=job.job_id, issued_at=utcnow(), executor_id=self.executor_id,
            attempt=job.attempt, exit_code=exit_code, answer_id=stdout.stream_id if stdout else None,
            stderr_id=stderr.stream_id if stderr else None, error=error,
            started_at=entry.started_at)  # also decides the start if its report never arrived
        # All in one produce request rather than one round trip after the other.
        await asyncio.gather(
            *(until_acknowledged(functools.partial(self.publish_file, f), f"file.stored of {f.stream_id}")
              for f in (stdout, stderr) if f),
            until_acknowledged(functools.partial(self.send, finish), f"job.finish of {job.job_id}"))

    def _spawn(self, job: Job, workspace: Path, out_path: Path, err_path: Path) -> subprocess.Popen[bytes]:
        """Spawn (vfork + exec) the launcher and `/bin/sh -c command`. The exit is then awaited
        through a pidfd, with no thread or SIGCHLD handler per child."""
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            return subprocess.Popen(
                [*self._launcher, "/bin/sh", "-c", job.command],
                cwd=workspace, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, env=self._env(job, workspace),
            )

    def _report_start(self, entry: Running) -> None:
        """The job is still running: say so (a lease from then on), and heartbeat while it runs."""
        job = entry.job
        start = StartJob(command_id=new_id(), stream_id=job.job_id, issued_at=entry.started_at or utcnow(),
                         executor_id=self.executor_id, attempt=job.attempt)
        asyncio.ensure_future(self._send_quietly(start))
        self._schedule_heartbeat(entry)

    def _schedule_heartbeat(self, entry: Running) -> None:
        loop = asyncio.get_running_loop()
        entry.timers.append(loop.call_later(self.config.heartbeat_interval, self._heartbeat, entry))

    def _heartbeat(self, entry: Running) -> None:
        if entry.job.job_id not in self.running:
            return
        job = entry.job
        beat = Heartbeat(command_id=new_id(), stream_id=job.job_id, issued_at=utcnow(),
                         executor_id=self.executor_id, attempt=job.attempt)
        asyncio.ensure_future(self._send_quietly(beat))
        self._schedule_heartbeat(entry)

    async def _send_quietly(self, command: Command) -> None:
        try:
            await self.send(command)
        except Exception as exc:  # a lost start or heartbeat: the finish still counts, or the lease keeper decides
            log.warning("could not send %s for job %s: %r", type(command).__name__, command.stream_id, exc)

    def _prepare(self, job: Job, workspace: Path) -> None:
        _remove_tree(workspace)  # what an earlier attempt on this machine left
        workspace.mkdir(parents=True)
        refs = ([job.binary] if job.binary else []) + list(job.input_files)
        for ref in refs:
            target = workspace / ref.name
            if not self.blobs.copy_to(ref.file_id, target):
                raise _MissingInput(f"input file {ref.file_id} ({ref.name}) is no longer stored")
        if job.binary:
            (workspace / job.binary.name).chmod(0o755)
        if self._user:
            for path in [workspace, *workspace.iterdir()]:
                os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _env(self, job: Job, workspace: Path) -> dict[str, str]:
        return {
            "PATH": self._env_path,
            "HOME": str(workspace),
            "LANG": "C.UTF-8",
            "SKYJOBS_JOB_ID": job.job_id,
        }

    async def _store_output(self, job: Job, path: Path, stream: str, keep_empty: bool) -> FileStored | None:
        """Move an output file into the blob store (no copy): its event to publish; an empty stderr is dropped."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        if size == 0 and not keep_empty:
            path.unlink(missing_ok=True)
            return None
        file_id = new_id()
        if size <= _INLINE_HASH:
            sha = _sha256(path)
            self.blobs.move_in(file_id, path)
        else:
            sha = await asyncio.to_thread(_sha256, path)
            await asyncio.to_thread(self.blobs.move_in, file_id, path)
        return FileStored(event_id=new_id(), stream_id=file_id, sequence=1, occurred_at=utcnow(),
                          correlation_id=job.correlation_id or job.job_id, causation_id=job.job_id,
                          actor=job.user_id, owner_id=job.user_id, name=f"{job.job_id}.{stream}", size=size,
                          sha256=sha, content_type="text/plain", job_id=job.job_id)

    def stop(self, job_id: str, reason: str) -> None:
        """SIGTERM the job's whole process group now, SIGKILL after the grace period."""
        entry = self.running.get(job_id)
        if entry is None or entry.stop_reason is not None:
            return
        entry.stop_reason = reason
        if entry.process is None:
            return  # not started yet: _execute sees stop_reason and skips it
        _signal_group(entry.process.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        entry.timers.append(loop.call_later(self.config.cancel_grace, _signal_group, entry.process.pid, signal.SIGKILL))


class _MissingInput(RuntimeError):
    pass


def _remove_tree(path: Path) -> None:
    """Most jobs leave their directory empty: one rmdir instead of a walk."""
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _describe_exit(returncode: int, stop_reason: str | None, limits: JobLimits) -> tuple[int, str | None]:
    """Exit code in the shell's convention (128 + signal) and, for a signal, what it means."""
    code = 128 - returncode if returncode < 0 else returncode
    if stop_reason is not None or code <= 128:
        return code, stop_reason
    try:
        sig = signal.Signals(code - 128)
    except ValueError:
        return code, None
    if sig == signal.SIGXCPU:
        return code, f"CPU time limit of {limits.cpu_seconds} s exceeded (SIGXCPU)"
    if sig == signal.SIGXFSZ:
        return code, f"file size limit of {limits.file_size_bytes} bytes exceeded (SIGXFSZ)"
    if returncode < 0:
        return code, f"killed by {sig.name}"
    return code, None
