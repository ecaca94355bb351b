"""The job launcher (compiled, and the prlimit + setpriv fallback) applies limits and the user."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from services.config import JobLimits
from services.jobs import launch

LIMITS = JobLimits(cpu_seconds=7, memory_bytes=512 * 1024**2, file_size_bytes=3 * 1024**2, processes=99)
PROBE = "ulimit -t; ulimit -v; ulimit -f; id -u"


def _run(prefix: list[str]) -> list[str]:
    done = subprocess.run([*prefix, "/bin/sh", "-c", PROBE], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def _user() -> pwd.struct_passwd | None:
    return pwd.getpwnam("nobody") if os.geteuid() == 0 else None


@pytest.mark.parametrize("kind", ["compiled", "util-linux"])
def test_limits_and_user_reach_the_command(kind: str, tmp_path: Path) -> None:
    user = _user()
    if kind == "compiled":
        prefix = launch.prefix(LIMITS, user, tmp_path)
        if not prefix[0].startswith(str(tmp_path)):
            pytest.skip("no C compiler here: the executor uses prlimit and setpriv")
    else:
        prefix = launch._util_linux(LIMITS, user)
    cpu, memory_kb, file_blocks, uid = _run(prefix)
    assert (int(cpu), int(memory_kb) * 1024, int(file_blocks) * 512) == (7, LIMITS.memory_bytes, LIMITS.file_size_bytes)
    assert int(uid) == (user.pw_uid if user else os.geteuid())


def test_compiled_launcher_refuses_bad_usage(tmp_path: Path) -> None:
    prefix = launch.prefix(LIMITS, _user(), tmp_path)
    if not prefix[0].startswith(str(tmp_path)):
        pytest.skip("no C compiler here")
    done = subprocess.run([prefix[0], "1"], capture_output=True, text=True)
    assert done.returncode == 126 and "usage" in done.stderr
