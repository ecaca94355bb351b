"""Configuration from SKYJOBS_* environment variables, read once per process (the composition root)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A SKYJOBS_* variable has a value that cannot be used."""


@dataclass(frozen=True)
class User:
    user_id: str
    role: str  # "admin" or "user"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class JobLimits:
    """Resource limits applied to every job's process (0 = unlimited)."""

    cpu_seconds: int = 3600
    memory_bytes: int = 2 * 1024**3
    file_size_bytes: int = 1024**3
    processes: int = 4096


@dataclass(frozen=True)
class ProxySettings:
    """Knobs of the worker-service proxy (SKYJOBS_PROXY_*): the API's add_task and the router."""

    wait: float = 30.0  # add_task waits this long for the answer, then 504 with the task id
    max_wait: float = 300.0  # the most a caller may ask for with ?timeout=
    call_timeout: float = 60.0  # one attempt on one instance
    max_attempts: int = 3  # attempts on (preferably different) instances before the task fails
    backoff: float = 0.05  # delay before the second attempt, doubled for each further one
    concurrency: int = 16  # tasks at once on one instance (its /me may ask for fewer)
    queue: int = 1000  # outstanding tasks per service before add_task answers 429
    task_ttl: float = 600.0  # an accepted task that no instance took by then fails ("expired")
    no_instance_wait: float = 5.0  # the router waits this long for a healthy instance, then fails it (503)
    health_interval: float = 2.0  # every registered instance's /me is called this often
    probe_timeout: float = 2.0
    allowed_hosts: tuple[str, ...] = ()  # hosts an instance URL may name; empty: any
    max_body: int = 16 * 1024**2  # add_task body (base64 images)
    inline_limit: int = 256 * 1024  # larger file arguments and answers go to the blob store


@dataclass(frozen=True)
class Config:
    kafka_bootstrap: str = "127.0.0.1:9092"
    database_url: str = "postgresql://skyjobs:skyjobs@127.0.0.1:5432/skyjobs"
    data_dir: Path = REPO / ".skyjobs"
    host: str = "127.0.0.1"
    port: int = 8000
    tokens: dict[str, User] = field(default_factory=dict)
    partitions: int = 8
    lease_timeout: float = 30.0
    heartbeat_interval: float = 5.0
    start_report_delay: float = 0.2  # a job that ends sooner reports its start with its finish
    max_attempts: int = 3
    job_retention: int = 0  # seconds a finished job is kept before it is deleted; 0: kept until deleted
    job_forget_after: float = 3600.0  # seconds after its finish a deleted job's state leaves the lifecycle table
    executor_slots: int = 32
    cancel_grace: float = 5.0
    job_user: str = "nobody"
    job_limits: JobLimits = JobLimits()
    max_json_body: int = 1024**2
    max_upload: int = 256 * 1024**2
    kafka_timeout: float = 5.0
    read_your_writes_wait: float = 5.0
    idempotency_ttl: float = 86400.0  # seconds an Idempotency-Key of POST /api/job/run is remembered
    worker_id: str = ""
    flink_home: str | None = None
    proxy: ProxySettings = ProxySettings()
    jobs_dir: Path | None = None  # where jobs' working directories live (default: <data_dir>/work)

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def work_dir(self) -> Path:
        return self.jobs_dir or self.data_dir / "work"


def parse_tokens(text: str) -> dict[str, User]:
    """`token=user_id:role` pairs separated by commas or new lines; role defaults to user."""
    tokens: dict[str, User] = {}
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        token, sep, who = item.partition("=")
        if not sep or not token or not who:
            raise ConfigError(f"SKYJOBS_TOKENS entry {item!r} is not token=user_id[:role]")
        user_id, _, role = who.partition(":")
        role = role or "user"
        if role not in ("user", "admin"):
            raise ConfigError(f"SKYJOBS_TOKENS role {role!r} must be user or admin")
        tokens[token.strip()] = User(user_id.strip(), role)
    return tokens


def from_env(env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ if env is None else env)
    base = Config()

    def get(name: str, default: str) -> str:
        return env.get(f"SKYJOBS_{name}", default)

    def number(name: str, default: float) -> float:
        raw = get(name, str(default))
        try:
            return float(raw)
        except ValueError as exc:
            raise ConfigError(f"SKYJOBS_{name}={raw!r} is not a number") from exc

    tokens_text = get("TOKENS", "")
    if tokens_file := env.get("SKYJOBS_TOKENS_FILE"):
        tokens_text += "\n" + Path(tokens_file).read_text()
    data_dir = Path(get("DATA_DIR", str(base.data_dir)))
    limits = JobLimits(
        cpu_seconds=int(number("JOB_CPU_SECONDS", JobLimits.cpu_seconds)),
        memory_bytes=int(number("JOB_MEMORY_BYTES", JobLimits.memory_bytes)),
        file_size_bytes=int(number("JOB_FILE_SIZE_BYTES", JobLimits.file_size_bytes)),
        processes=int(number("JOB_PROCESSES", JobLimits.processes)),
    )
    return Config(
        kafka_bootstrap=get("KAFKA_BOOTSTRAP", base.kafka_bootstrap),
        database_url=get("DATABASE_URL", base.database_url),
        data_dir=data_dir,
        jobs_dir=Path(env["SKYJOBS_WORK_DIR"]) if env.get("SKYJOBS_WORK_DIR") else None,
        host=get("HOST", base.host),
        port=int(number("PORT", base.port)),
        tokens=parse_tokens(tokens_text),
        partitions=int(number("PARTITIONS", base.partitions)),
        lease_timeout=number("LEASE_TIMEOUT", base.lease_timeout),
        heartbeat_interval=number("HEARTBEAT_INTERVAL", base.heartbeat_interval),
        start_report_delay=number("START_REPORT_DELAY", base.start_report_delay),
        max_attempts=int(number("MAX_ATTEMPTS", base.max_attempts)),
        job_retention=int(number("JOB_RETENTION", base.job_retention)),
        job_forget_after=number("JOB_FORGET_AFTER", base.job_forget_after),
        executor_slots=int(number("EXECUTOR_SLOTS", base.executor_slots)),
        cancel_grace=number("CANCEL_GRACE", base.cancel_grace),
        job_user=get("JOB_USER", base.job_user),
        job_limits=limits,
        max_json_body=int(number("MAX_JSON_BODY", base.max_json_body)),
        max_upload=int(number("MAX_UPLOAD", base.max_upload)),
        kafka_timeout=number("KAFKA_TIMEOUT", base.kafka_timeout),
        read_your_writes_wait=number("READ_YOUR_WRITES_WAIT", base.read_your_writes_wait),
        idempotency_ttl=number("IDEMPOTENCY_TTL", base.idempotency_ttl),
        worker_id=get("WORKER_ID", f"{os.uname().nodename}-{os.getpid()}"),
        flink_home=env.get("SKYJOBS_FLINK_HOME") or None,
        proxy=_proxy_settings(get, number),
    )


def _proxy_settings(get: Callable[[str, str], str], number: Callable[[str, float], float]) -> ProxySettings:
    base = ProxySettings()
    hosts = get("PROXY_ALLOWED_HOSTS", ",".join(base.allowed_hosts))
    return ProxySettings(
        wait=number("PROXY_WAIT", base.wait),
        max_wait=number("PROXY_MAX_WAIT", base.max_wait),
        call_timeout=number("PROXY_CALL_TIMEOUT", base.call_timeout),
        max_attempts=max(1, int(number("PROXY_MAX_ATTEMPTS", base.max_attempts))),
        backoff=number("PROXY_BACKOFF", base.backoff),
        concurrency=max(1, int(number("PROXY_CONCURRENCY", base.concurrency))),
        queue=max(1, int(number("PROXY_QUEUE", base.queue))),
        task_ttl=number("PROXY_TASK_TTL", base.task_ttl),
        no_instance_wait=number("PROXY_NO_INSTANCE_WAIT", base.no_instance_wait),
        health_interval=number("PROXY_HEALTH_INTERVAL", base.health_interval),
        probe_timeout=number("PROXY_PROBE_TIMEOUT", base.probe_timeout),
        allowed_hosts=tuple(h.strip().lower() for h in hosts.split(",") if h.strip()),
        max_body=int(number("PROXY_MAX_BODY", base.max_body)),
        inline_limit=int(number("PROXY_INLINE_LIMIT", base.inline_limit)),
    )
