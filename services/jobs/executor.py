"""Runs one job's command in its own working directory, process group and resource limits.

The executor only acts: it tells the lifecycle agent what happened (start, heartbeat, finish)
through commands, and stores the job's standard output and error as files.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pwd
import resource
import shutil
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from events.base import Command, new_id, utcnow
from events.files import FileStored
from events.jobs import FinishJob, Heartbeat, StartJob
from services.blobs import LocalBlobStore
from services.config import Config, JobLimits
from services.jobs.lifecycle import Job

log = logging.getLogger(__name__)

SendCommand = Callable[[Command], Awaitable[None]]
PublishFile = Callable[[FileStored], Awaitable[None]]

_PR_SET_PDEATHSIG = 1


@dataclass
class Running:
    job: Job
    process: asyncio.subprocess.Process | None = None
    stop_reason: str | None = None
    killer: asyncio.TimerHandle | None = None


def _limits_preexec(limits: JobLimits, user: pwd.struct_passwd | None) -> Callable[[], None]:
    """Runs in the child between fork and exec: the job's user, parent-death signal and limits."""
    libc = ctypes.CDLL(None, use_errno=True)
    pairs = [
        (resource.RLIMIT_CPU, limits.cpu_seconds),
        (resource.RLIMIT_AS, limits.memory_bytes),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes),
        (resource.RLIMIT_NPROC, limits.processes),
    ]

    def preexec() -> None:
        if user is not None:  # drop root first: a change of user clears the parent-death signal
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        # If the executor dies (kill -9), its jobs die with it instead of running on unobserved;
        # the lease keeper then re-runs or fails them.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        for kind, value in pairs:
            if value > 0:
                soft, hard = resource.getrlimit(kind)
                new_hard = value if hard == resource.RLIM_INFINITY else min(value, hard)
                resource.setrlimit(kind, (min(value, new_hard), new_hard))

    return preexec


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
        self._preexec = _limits_preexec(config.job_limits, self._user)
        config.work_dir.mkdir(parents=True, exist_ok=True)
        self._out_dir = config.work_dir / ".out"
        self._out_dir.mkdir(exist_ok=True)

    async def run(self, job: Job) -> None:
        """Start the job, wait for it, store its outputs and report the finish."""
        entry = Running(job)
        self.running[job.job_id] = entry
        try:
            await self.send(
                StartJob(command_id=new_id(), stream_id=job.job_id, issued_at=utcnow(),
                         executor_id=self.executor_id, attempt=job.attempt)
            )
            await self._execute(entry)
        finally:
            if entry.killer:
                entry.killer.cancel()
            self.running.pop(job.job_id, None)

    async def _execute(self, entry: Running) -> None:
        job = entry.job
        workspace = self.config.work_dir / job.job_id
        out_path = self._out_dir / f"{job.job_id}.{job.attempt}.out"
        err_path = self._out_dir / f"{job.job_id}.{job.attempt}.err"
        exit_code: int | None = None
        error: str | None = None
        try:
            self._prepare(job, workspace)
            if entry.stop_reason is None:
                with open(out_path, "wb") as out, open(err_path, "wb") as err:
                    entry.process = await asyncio.create_subprocess_exec(
                        "/bin/sh", "-c", job.command,
                        cwd=workspace, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
                        start_new_session=True, preexec_fn=self._preexec, env=self._env(job, workspace),
                    )
                returncode = await entry.process.wait()
                exit_code, error = _describe_exit(returncode, entry.stop_reason, self.config.job_limits)
            else:
                error = entry.stop_reason
        except _MissingInput as exc:
            error = str(exc)
        except OSError as exc:
            error = f"could not start the job: {exc}"
        answer_id = await self._store_output(job, out_path, "stdout")
        stderr_id = await self._store_output(job, err_path, "stderr")
        shutil.rmtree(workspace, ignore_errors=True)
        await self.send(
            FinishJob(command_id=new_id(), stream_id=job.job_id, issued_at=utcnow(), executor_id=self.executor_id,
                      attempt=job.attempt, exit_code=exit_code, answer_id=answer_id, stderr_id=stderr_id, error=error)
        )

    def _prepare(self, job: Job, workspace: Path) -> None:
        shutil.rmtree(workspace, ignore_errors=True)
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
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(workspace),
            "LANG": "C.UTF-8",
            "SKYJOBS_JOB_ID": job.job_id,
        }

    async def _store_output(self, job: Job, path: Path, stream: str) -> str | None:
        if not path.exists():
            return None
        file_id = new_id()
        size, sha = self.blobs.put_file(file_id, path)
        path.unlink(missing_ok=True)
        await self.publish_file(
            FileStored(event_id=new_id(), stream_id=file_id, sequence=1, occurred_at=utcnow(),
                       correlation_id=job.correlation_id or job.job_id, causation_id=job.job_id,
                       actor=job.user_id, owner_id=job.user_id, name=f"{job.job_id}.{stream}", size=size,
                       sha256=sha, content_type="text/plain", job_id=job.job_id)
        )
        return file_id

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
        entry.killer = loop.call_later(self.config.cancel_grace, _signal_group, entry.process.pid, signal.SIGKILL)

    async def heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            for entry in list(self.running.values()):
                job = entry.job
                with contextlib.suppress(Exception):
                    await self.send(
                        Heartbeat(command_id=new_id(), stream_id=job.job_id, issued_at=utcnow(),
                                  executor_id=self.executor_id, attempt=job.attempt)
                    )


class _MissingInput(RuntimeError):
    pass


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
