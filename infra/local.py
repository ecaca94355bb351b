"""Run a single-node KRaft Kafka (jars from Maven Central) and a local Postgres as child processes.

Both classes keep everything in their ``data_dir`` (config, data, chosen ports, log file), so a second
instance on the same directory restarts the same server with the same data and ports.  Processes run in
their own session: a Ctrl-C in the parent's terminal does not reach them, the owner stops them explicitly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

INFRA_DIR = Path(__file__).resolve().parent
KAFKA_POM = INFRA_DIR / "kafka" / "pom.xml"
KAFKA_LOG4J = INFRA_DIR / "kafka" / "log4j2.properties"
STATE_DIR = INFRA_DIR.parent / ".skyjobs"  # git-ignored
KAFKA_VERSION = re.search(r"<kafka\.version>(.+?)</kafka\.version>", KAFKA_POM.read_text()).group(1)  # type: ignore[union-attr]
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
STOP_TIMEOUT = 30.0
T = TypeVar("T")


# --------------------------------------------------------------------------------------------- helpers


def kafka_libs(cache_dir: Path | None = None) -> Path:
    """Ensure the broker jars are present and return the libs dir (``.skyjobs/kafka-libs-<version>``)."""
    libs = Path(cache_dir) if cache_dir else STATE_DIR / f"kafka-libs-{KAFKA_VERSION}"
    return maven_libs(KAFKA_POM, libs, hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest(), "Kafka")


def maven_libs(pom: Path, libs: Path, stamp: str, what: str, finish: Callable[[Path], None] | None = None) -> Path:
    """The runtime jars of `pom` copied into `libs` by Maven (its ~/.m2 cache makes repeats cheap).

    Idempotent and safe from several processes at once (a file lock); the marker file holds `stamp`
    (a hash of everything that went in), so a half-copied dir or an edited pom triggers a new copy.
    `finish(libs)` adds what else belongs in the dir before it is marked complete.
    """
    marker = libs / ".complete"
    if read_text(marker) == stamp:
        return libs
    libs.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(libs.parent / f".{libs.name}.lock"):
        if read_text(marker) == stamp:  # another process finished while we waited
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError("mvn not found: run `python -m infra install`")
        shutil.rmtree(libs, ignore_errors=True)
        cmd = [mvn, "-B", "-q", "-f", str(pom), DEPENDENCY_PLUGIN,
               "-DincludeScope=runtime", f"-DoutputDirectory={libs}"]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"fetching {what} jars failed:\n{result.stdout}\n{result.stderr}")
        if finish is not None:
            finish(libs)
        marker.write_text(stamp)
    return libs


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin_dir() -> Path:
    """Postgres server binaries: $SKYJOBS_PG_BIN, else the newest /usr/lib/postgresql/*/bin."""
    if env := os.environ.get("SKYJOBS_PG_BIN"):
        return Path(env)
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if not found:
        raise RuntimeError(
            "PostgreSQL server binaries not found: run `python -m infra install` or set SKYJOBS_PG_BIN"
        )
    return max(found, key=lambda b: [int(x) for x in re.findall(r"\d+", b.parent.name)] or [0])


def docker_available() -> bool:
    """True if a Docker engine answers (a docker client alone is not enough); False fast otherwise."""
    try:
        import docker  # from testcontainers (dev extra)

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def java_bin() -> str:
    """The java executable ($JAVA_HOME/bin/java or java on PATH)."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise RuntimeError("java not found: run `python -m infra install`")
    return java


async def wait_kafka(bootstrap: str, timeout: float = 60, alive: Callable[[], None] | None = None) -> None:  # noqa: ASYNC109
    """Loop an admin ``describe_cluster()`` until the broker answers (``alive()`` raises if the process died)."""
    from aiokafka.admin import AIOKafkaAdminClient

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    host = host.strip("[]")

    async def probe() -> None:
        # A plain TCP connect first: aiokafka logs an error for every refused bootstrap attempt.
        _, writer = await asyncio.open_connection(host, int(port))
        writer.close()
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            if not cluster.get("brokers"):
                raise RuntimeError("no broker registered yet")
        finally:
            await admin.close()

    await _poll(f"Kafka at {bootstrap}", probe, timeout, alive)


async def wait_postgres(dsn: str, timeout: float = 30, alive: Callable[[], None] | None = None) -> None:  # noqa: ASYNC109
    """Loop ``asyncpg.connect(dsn)`` until the server accepts us."""
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        await conn.close()

    await _poll(f"Postgres at {dsn}", probe, timeout, alive)


async def _poll(
    what: str, probe: Callable[[], Awaitable[None]], limit: float, alive: Callable[[], None] | None
) -> None:
    deadline = time.monotonic() + limit
    while True:
        if alive is not None:
            alive()
        try:
            await probe()
            return
        except Exception as exc:  # any failure means "not ready yet"
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready after {limit:.0f} s: {exc!r}") from exc
        await asyncio.sleep(0.1)


def read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    stat = read_text(Path(f"/proc/{pid}/stat"))
    return stat is not None and stat.rpartition(")")[2].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _resolve_ports(data_dir: Path, **wanted: int | None) -> dict[str, int]:
    """Explicit ports win, then the ones stored in ``data_dir/ports.json``, then fresh free ports."""
    try:
        stored = json.loads((data_dir / "ports.json").read_text())
    except FileNotFoundError:
        stored = {}
    ports: dict[str, int] = {}
    for name, port in wanted.items():
        chosen = port or stored.get(name)
        while not chosen or chosen in ports.values():
            chosen = free_port()
        ports[name] = int(chosen)
    return ports


def _save_ports(data_dir: Path, ports: dict[str, int]) -> None:
    (data_dir / "ports.json").write_text(json.dumps(ports) + "\n")


# --------------------------------------------------------------------------------------------- processes


class _Server:
    """A server child process in its own session, output appended to ``data_dir/<name>.log``."""

    name = "server"
    stop_signal = signal.SIGTERM
    process_marker = ""  # a string in the server's command line (to recognise it from a pid file)

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.log_path = self.data_dir / f"{self.name}.log"
        self.pid_path = self.data_dir / f"{self.name}.pid"
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """prepare(), then run command() in the background."""
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError(f"{self.name} already running (pid {self._proc.pid})")
        self.prepare()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.data_dir, start_new_session=True,
            )  # fmt: skip
        self.pid_path.write_text(f"{self._proc.pid}\n")

    def stop(self) -> None:
        """Ask the server to shut down cleanly; SIGKILL it if it takes longer than 30 s."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(self.stop_signal)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
        self.pid_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, for fault tests)."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.pid_path.unlink(missing_ok=True)

    def stop_detached(self) -> bool:
        """Stop a server started by another process (found through its pid file); True if one was running."""
        pid = int(read_text(self.pid_path) or 0)
        running = pid > 0 and pid_alive(pid) and self.process_marker in cmdline(pid)
        if running:
            os.kill(pid, self.stop_signal)
            deadline = time.monotonic() + STOP_TIMEOUT
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        self.pid_path.unlink(missing_ok=True)
        return running

    def check_alive(self) -> None:
        """Raise if the process we started has exited (with the end of its log)."""
        if self._proc is not None and self._proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(
                f"{self.name} exited with code {self._proc.returncode}; end of {self.log_path}:\n{tail}"
            )


class LocalKafka(_Server):
    """Single-node KRaft Kafka (combined broker+controller) bound to 127.0.0.1."""

    name = "kafka"
    process_marker = "kafka.Kafka"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        fast_start: bool = False,
    ) -> None:
        super().__init__(data_dir)
        ports = _resolve_ports(self.data_dir, port=port, controller_port=controller_port)
        self.port = ports["port"]
        self.controller_port = ports["controller_port"]
        self.fast_start = fast_start
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.config_path = self.data_dir / "server.properties"
        self.log_dir = self.data_dir / "data"

    def server_properties(self) -> str:
        props = {
            "process.roles": "broker,controller",
            "node.id": 1,
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": self.log_dir,
            "num.partitions": 8,
            "default.replication.factor": 1,
            "min.insync.replicas": 1,
            "auto.create.topics.enable": "false",
            "log.retention.ms": -1,  # the event log is the source of truth
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "group.initial.rebalance.delay.ms": 0,
            "log.cleaner.dedupe.buffer.size": 16777216,
            "num.network.threads": 2,
            "num.io.threads": 2,
            "num.recovery.threads.per.data.dir": 1,
        }
        if self.fast_start:
            # After a crash (SIGKILL) the restarted broker cannot register until its previous session
            # expires: 9 s by default (restart ~12 s), ~5 s with these.
            props |= {"broker.session.timeout.ms": 3000, "broker.heartbeat.interval.ms": 500}
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _java(self, main: str, *args: str, tool: bool = False) -> list[str]:
        opts = ["-Xmx256m"] if tool else ["-Xms256m", "-Xmx512m"]
        opts += ["-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
                 f"-Dlog4j2.configurationFile={KAFKA_LOG4J}"]  # fmt: skip
        if self.fast_start or tool:  # C1 only: quicker start-up, slower peak throughput
            opts.append("-XX:TieredStopAtLevel=1")
        if not tool:  # e.g. "-Xlog:gc:file=/tmp/kafka-gc.log" (later options win over the ones above)
            opts += os.environ.get("SKYJOBS_KAFKA_JVM_OPTS", "").split()
        return [java_bin(), *opts, "-cp", f"{kafka_libs()}/*", main, *args]

    def command(self) -> list[str]:
        """Foreground broker command; run prepare() first."""
        return self._java("kafka.Kafka", str(self.config_path))

    def prepare(self) -> None:
        """Write server.properties and format the storage on first use (cluster id kept in data_dir)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _save_ports(self.data_dir, {"port": self.port, "controller_port": self.controller_port})
        self.config_path.write_text(self.server_properties())
        if (self.log_dir / "meta.properties").exists():
            return
        id_file = self.data_dir / "cluster-id"
        cluster_id = read_text(id_file)
        if not cluster_id:
            cluster_id = new_cluster_id()
            id_file.write_text(cluster_id + "\n")
        cmd = self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config_path),
                         "--ignore-formatted", tool=True)  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"kafka storage format failed:\n{result.stdout}\n{result.stderr}")

    async def wait_ready(self, timeout: float = 60) -> None:  # noqa: ASYNC109 - public interface
        """Wait until the broker answers describe_cluster (fails fast if the process died)."""
        await wait_kafka(self.bootstrap, timeout, self.check_alive)


def new_cluster_id() -> str:
    """22 chars of base64url of a random UUID, not starting with '-' (what kafka-storage random-uuid does)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class LocalPostgres(_Server):
    """Local Postgres on 127.0.0.1 with role/database ``skyjobs`` (password ``skyjobs``).

    When we are root the server runs as the ``postgres`` user (initdb refuses root) via ``setpriv``, which
    execs in place (unlike runuser, which forks), so our signals reach the postmaster itself.
    """

    name = "postgres"
    process_marker = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown; SIGTERM ("smart") would wait for every client to leave

    def __init__(self, data_dir: Path, port: int | None = None, fast: bool = False) -> None:
        super().__init__(data_dir)
        self.port = _resolve_ports(self.data_dir, port=port)["port"]
        self.fast = fast
        self.dsn = f"postgresql://skyjobs:skyjobs@127.0.0.1:{self.port}/skyjobs"
        self.pgdata = self.data_dir / "pgdata"
        self._marker = self.data_dir / ".bootstrapped"

    def _as_owner(self, cmd: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return cmd
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *cmd]

    def command(self) -> list[str]:
        """Foreground postmaster command; run prepare() first."""
        return self._as_owner([str(pg_bin_dir() / "postgres"), "-D", str(self.pgdata)])

    def settings(self) -> dict[str, str]:
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": "''",  # TCP only: no /var/run/postgresql, no socket path limits
            "max_connections": "200",
            "shared_buffers": "'256MB'",
        }
        if self.fast:  # tests only: a crash may corrupt the cluster
            conf |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        return conf

    def prepare(self) -> None:
        """initdb + role/database on first use, then (re)write skyjobs.conf."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _save_ports(self.data_dir, {"port": self.port})
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")
        first_use = not self._marker.exists()
        if first_use:
            shutil.rmtree(self.pgdata, ignore_errors=True)  # a half-done bootstrap is redone
            self._run([str(pg_bin_dir() / "initdb"), "-D", str(self.pgdata), "--username=postgres",
                       "--encoding=UTF8", "--no-locale", "--auth-local=peer", "--auth-host=scram-sha-256",
                       *(["--no-sync"] if self.fast else [])])  # fmt: skip
            with open(self.pgdata / "postgresql.conf", "a") as f:
                f.write("\ninclude_if_exists = 'skyjobs.conf'\n")
        conf_path = self.pgdata / "skyjobs.conf"
        conf_path.write_text("".join(f"{k} = {v}\n" for k, v in self.settings().items()))
        if os.geteuid() == 0:
            shutil.chown(conf_path, "postgres", "postgres")
        if first_use:
            sql = "CREATE ROLE skyjobs LOGIN SUPERUSER PASSWORD 'skyjobs';\nCREATE DATABASE skyjobs OWNER skyjobs;\n"
            self._run([str(pg_bin_dir() / "postgres"), "--single", "-D", str(self.pgdata), "-c", "exit_on_error=on",
                       "-c", "shared_buffers=16MB", "postgres"], stdin=sql)  # fmt: skip
            self._marker.write_text("ok\n")

    def _run(self, cmd: list[str], stdin: str | None = None) -> None:
        result = subprocess.run(
            self._as_owner(cmd), input=stdin, capture_output=True, text=True, cwd=self.data_dir
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(cmd[0]).name} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )

    async def wait_ready(self, timeout: float = 30) -> None:  # noqa: ASYNC109 - public interface
        """Wait until asyncpg can connect with the dsn (fails fast if the process died)."""
        await wait_postgres(self.dsn, timeout, self.check_alive)


def start_all(*servers: LocalKafka | LocalPostgres, timeout: float = 90) -> None:
    """prepare() + start() the servers in parallel threads, then wait until all are ready (stop all on error)."""
    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            for future in [pool.submit(server.start) for server in servers]:
                future.result()

        async def wait_all() -> None:
            await asyncio.gather(*(server.wait_ready(timeout) for server in servers))

        run_sync(wait_all())
    except BaseException:
        for server in servers:
            server.stop()
        raise


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(coro); from inside a running event loop, in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
