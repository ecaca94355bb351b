"""The argv prefix that starts a job's command with its limits, its user and a parent-death signal.

No Python runs between fork and exec, so CPython spawns with vfork. The prefix is the small
`launcher.c` beside this file, compiled once per version into the data directory when a C
compiler is there, or util-linux's `prlimit` and `setpriv` otherwise (one exec more per job).
Either way: the job dies when its executor dies, so the lease keeper's re-run never races it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from services.config import JobLimits

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("launcher.c")


def prefix(limits: JobLimits, user: pwd.struct_passwd | None, bin_dir: Path) -> list[str]:
    """What comes before `/bin/sh -c command`."""
    launcher = _compiled(bin_dir)
    if launcher is not None:
        uid, gid = (user.pw_uid, user.pw_gid) if user is not None else (-1, -1)
        return [str(launcher), str(limits.cpu_seconds), str(limits.memory_bytes), str(limits.file_size_bytes),
                str(limits.processes), str(uid), str(gid), str(os.getpid()), "--"]
    return _util_linux(limits, user)


def _compiled(bin_dir: Path) -> Path | None:
    source = SOURCE.read_bytes()
    target = bin_dir / f"skyjobs-launch-{hashlib.sha256(source).hexdigest()[:12]}"
    if target.exists():
        return target
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    bin_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    for static in (["-static"], []):  # static: no dynamic loader at each exec (when libc.a is there)
        done = subprocess.run([compiler, "-O2", *static, "-o", str(tmp), str(SOURCE)], capture_output=True)
        if done.returncode == 0:
            tmp.chmod(0o755)
            os.replace(tmp, target)
            return target
    log.warning("could not compile %s (%s): using prlimit and setpriv", SOURCE, done.stderr.decode()[-500:])
    return None


def _util_linux(limits: JobLimits, user: pwd.struct_passwd | None) -> list[str]:
    tools = {name: shutil.which(name) for name in ("prlimit", "setpriv")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        raise RuntimeError(f"the executor needs a C compiler or util-linux's {' and '.join(missing)} on PATH")
    argv = [str(tools["prlimit"])]
    for flag, value in (("cpu", limits.cpu_seconds), ("as", limits.memory_bytes),
                        ("fsize", limits.file_size_bytes), ("nproc", limits.processes)):
        if value > 0:
            argv.append(f"--{flag}={value}")
    argv += ["--", str(tools["setpriv"]), "--pdeathsig=KILL"]
    if user is not None:
        argv += [f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    return [*argv, "--"]
