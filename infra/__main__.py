"""``python -m infra install | up | down``: install and run the local Kafka + Postgres.

install   fetch the Kafka jars; apt-get install java/maven/postgresql only when they are missing
          (--flink: also Flink's jars for FLINK_JAR/FLINK_SQL works, else fetched on first use)
up        run Kafka and Postgres in the foreground (data in --dir) until Ctrl-C / SIGTERM
down      stop the servers an `up` (or anything else using the same --dir) left running
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from infra.local import (
    STATE_DIR,
    STOP_TIMEOUT,
    LocalKafka,
    LocalPostgres,
    cmdline,
    kafka_libs,
    pg_bin_dir,
    pid_alive,
    read_text,
    start_all,
)

DEFAULT_DIR = STATE_DIR / "dev"


def _apt_install(*packages: str) -> None:
    if os.geteuid() != 0:
        sys.exit(
            f"missing system packages; run as root or install them yourself: apt-get install {' '.join(packages)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *packages], check=True, env=env)


def install(flink: bool = False) -> None:
    """Make sure java, mvn, the Postgres server binaries, Chromium and the Kafka jars are present."""
    packages = []
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        packages.append("default-jre-headless")
    if not shutil.which("mvn"):
        packages.append("maven")
    try:
        pg_bin_dir()
    except RuntimeError:
        packages.append("postgresql")
        # We run our own clusters: do not let the Debian package create and start "main" on port 5432.
        conf = Path("/etc/postgresql-common/createcluster.d/skyjobs.conf")
        if os.geteuid() == 0:
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text("create_main_cluster = false\n")
    if not shutil.which("chromium"):
        packages.append("chromium")  # the dashboard's end-to-end test drives Debian's Chromium
    if packages:
        print(f"installing {' '.join(packages)} with apt-get", flush=True)
        _apt_install(*packages)
    start = time.monotonic()
    libs = kafka_libs()
    print(f"kafka jars: {libs} ({time.monotonic() - start:.1f} s)")
    if flink:
        from infra.flink import flink_libs

        start = time.monotonic()
        print(f"flink jars: {flink_libs()} ({time.monotonic() - start:.1f} s)")
    print(f"postgres binaries: {pg_bin_dir()}")


def up(root: Path, kafka_port: int | None, postgres_port: int | None) -> None:
    """Run both servers until SIGINT/SIGTERM, then stop them cleanly."""
    kafka = LocalKafka(root / "kafka", port=kafka_port)
    postgres = LocalPostgres(root / "postgres", port=postgres_port)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    root.mkdir(parents=True, exist_ok=True)
    (root / "up.pid").write_text(f"{os.getpid()}\n")
    start = time.monotonic()
    start_all(kafka, postgres)
    print(f"ready in {time.monotonic() - start:.1f} s (logs: {kafka.log_path}, {postgres.log_path})")
    print(f"export SKYJOBS_KAFKA_BOOTSTRAP={kafka.bootstrap}")
    print(f"export SKYJOBS_DATABASE_URL={postgres.dsn}", flush=True)
    try:
        while not stopping.wait(1.0):
            kafka.check_alive()
            postgres.check_alive()
    finally:
        print("stopping", flush=True)
        kafka.stop()
        postgres.stop()
        (root / "up.pid").unlink(missing_ok=True)


def down(root: Path) -> None:
    """Stop a running `up` on root (it stops its servers), then any server left in the pid files."""
    up_pid = int(read_text(root / "up.pid") or 0)
    if up_pid and pid_alive(up_pid) and "infra" in cmdline(up_pid):
        os.kill(up_pid, signal.SIGTERM)
        deadline = time.monotonic() + 2 * STOP_TIMEOUT + 5
        while pid_alive(up_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"up (pid {up_pid}): {'still running' if pid_alive(up_pid) else 'stopped'}")
    for server in (LocalKafka(root / "kafka"), LocalPostgres(root / "postgres")):
        print(f"{server.name}: {'stopped' if server.stop_detached() else 'not running'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m infra", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    install_parser = sub.add_parser("install", help="fetch the Kafka jars, apt-get what is missing")
    install_parser.add_argument(
        "--flink", action="store_true", help="also fetch Flink's jars (about 190 MB; otherwise on first use)"
    )
    up_parser = sub.add_parser("up", help="run Kafka + Postgres in the foreground")
    up_parser.add_argument("--kafka-port", type=int)
    up_parser.add_argument("--postgres-port", type=int)
    down_parser = sub.add_parser("down", help="stop servers left running in --dir")
    for p in (up_parser, down_parser):
        p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"data dir (default {DEFAULT_DIR})")
    args = parser.parse_args(argv)
    if args.command == "install":
        install(flink=args.flink)
    elif args.command == "up":
        up(args.dir, args.kafka_port, args.postgres_port)
    else:
        down(args.dir)


if __name__ == "__main__":
    main()
