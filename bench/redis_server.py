"""A throw-away Redis server for the Celery comparison: Debian's redis-server on a free port in a temp dir."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from infra.local import free_port

REDIS_SERVER = "/usr/bin/redis-server"


def ensure_installed() -> str:
    """The redis-server binary; `apt-get install redis-server` first if it is missing (idempotent)."""
    found = shutil.which("redis-server") or (REDIS_SERVER if Path(REDIS_SERVER).exists() else None)
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("redis-server is missing: apt-get install redis-server (as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("installing redis-server with apt-get", flush=True)
    install = ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(install, env=env, check=True, stdout=subprocess.DEVNULL)
    return REDIS_SERVER


def version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return out.split(" v=")[1].split()[0] if " v=" in out else out.strip()


@contextlib.contextmanager
def running_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """redis-server on 127.0.0.1:<free port> without persistence (no RDB, no AOF); yields (url, process)."""
    binary = ensure_installed()
    root = Path(tempfile.mkdtemp(prefix="skyjobs-bench-redis-"))
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root), "--save", "",
           "--appendonly", "no", "--daemonize", "no", "--logfile", str(root / "redis.log"),
           "--databases", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start (log: {root / 'redis.log'})") from None
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}", proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
