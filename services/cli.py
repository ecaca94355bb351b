"""`skyjobs dev | setup | api | worker | executor | projector | router | pipelines | replay`: every process's entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys

from services.config import Config, from_env

log = logging.getLogger("skyjobs")
PROCESSES = ("projector", "worker", "executor", "router", "pipelines", "api")  # what `skyjobs dev` runs


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)


async def setup(config: Config) -> None:
    """Create the topics and apply the migrations (idempotent; every process may run it)."""
    from services import db
    from services.kafka import create_topics

    await create_topics(config.kafka_bootstrap, config.partitions)
    await db.migrate(config.database_url)


def run_api(config: Config) -> None:
    import uvicorn

    from services.api.app import create_app

    uvicorn.run(create_app(config), host=config.host, port=config.port, loop="uvloop", log_level="warning",
                access_log=False, timeout_graceful_shutdown=5)


def run_faust(config: Config, app_module: str) -> None:
    """A faust app's process: `worker` (jobs and works), `router` (the task proxy), `pipelines`."""
    import importlib

    import faust
    import mode.loop

    mode.loop.use("uvloop")  # measured: the asyncio loop doubled the router's time per task
    asyncio.run(setup(config))
    app = importlib.import_module(app_module).create_app(config)
    worker = faust.Worker(app, loglevel=os.environ.get("SKYJOBS_LOG_LEVEL", "INFO"), quiet=True,
                          override_logging=False)
    worker.execute_from_commandline()


FAUST_APPS = {
    "worker": "services.jobs.worker",  # job lifecycle, lease keeper, works and the scheduler
    "router": "services.proxy.router",  # the task proxy (seed 004): registry, health checks, routing
    "pipelines": "services.pipelines.agents",  # the pipeline workers (seed 002): tokens, joiners, specs
}


def run_executor(config: Config) -> None:
    """Runs the jobs of its share of the job partitions (services/jobs/dispatcher.py)."""
    import uvloop

    from services.jobs import dispatcher
    from services.kafka import create_topics

    async def main() -> None:
        await create_topics(config.kafka_bootstrap, config.partitions)
        await dispatcher.run(config)

    uvloop.run(main())


def run_projector(config: Config) -> None:
    import uvloop

    from projections.runner import run_projector as project

    async def main() -> None:
        await setup(config)
        await project(config.kafka_bootstrap, config.database_url)

    uvloop.run(main())


def run_replay(config: Config, names: list[str], everything: bool, keep_old: bool) -> None:
    import orjson

    from projections.replay import NAMES, ReplayError, replay

    if everything == bool(names):
        raise SystemExit(f"skyjobs replay: give --all or --projection NAME (one of {', '.join(NAMES)})")
    try:
        result = asyncio.run(replay(config.kafka_bootstrap, config.database_url, NAMES if everything else tuple(names),
                                    keep_old=keep_old))
    except ReplayError as exc:
        raise SystemExit(f"skyjobs replay: {exc}") from None
    print(orjson.dumps(result).decode())


async def dev(config: Config) -> None:
    """Local Kafka and Postgres under .skyjobs/, then every skyjobs process under one supervisor."""
    from infra.local import LocalKafka, LocalPostgres, kafka_libs
    from services.supervisor import Supervisor

    data = config.data_dir
    data.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor()
    env: dict[str, str] = {}
    kafka = postgres = None
    if "SKYJOBS_KAFKA_BOOTSTRAP" not in os.environ:
        kafka_libs()
        kafka = LocalKafka(data / "kafka")
        kafka.start()
        env["SKYJOBS_KAFKA_BOOTSTRAP"] = kafka.bootstrap
    if "SKYJOBS_DATABASE_URL" not in os.environ:
        postgres = LocalPostgres(data / "postgres")
        postgres.start()
        env["SKYJOBS_DATABASE_URL"] = postgres.dsn
    try:
        if kafka:
            supervisor.echo("kafka", f"starting on {kafka.bootstrap} (log: {data / 'kafka' / 'kafka.log'})")
            await kafka.wait_ready()
        if postgres:
            supervisor.echo("postgres", f"starting on {postgres.dsn}")
            await postgres.wait_ready()
        token_file = data / "dev-token"
        if not token_file.exists():
            token_file.write_text(secrets.token_urlsafe(24) + "\n")
            token_file.chmod(0o600)
        token = token_file.read_text().strip()
        tokens = f"{token}=dev:admin"
        if os.environ.get("SKYJOBS_TOKENS"):
            tokens += "," + os.environ["SKYJOBS_TOKENS"]
        env["SKYJOBS_TOKENS"] = tokens
        child_config = from_env({**os.environ, **env})
        await setup(child_config)
        python = sys.executable
        for name in PROCESSES:
            await supervisor.start(name, [python, "-m", "services.cli", name], env)
        url = f"http://{config.host}:{config.port}"
        supervisor.echo("skyjobs", f"API on {url}  (token in {token_file})")
        supervisor.echo("skyjobs", f"try: curl -H 'Authorization: Bearer {token}' {url}/api/job/run -X POST "
                                   "--data '{\"command\": \"uname -a | wc -l\",}'")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        supervisor.echo("skyjobs", "stopping")
    finally:
        await supervisor.stop()
        if kafka:
            kafka.stop()
        if postgres:
            postgres.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="skyjobs", description=__doc__)
    parser.add_argument("command", choices=["dev", "setup", "api", "worker", "executor", "projector", "router",
                                            "pipelines", "replay"])
    parser.add_argument("--projection", action="append", help="replay: a projection to rebuild (repeatable)")
    parser.add_argument("--all", action="store_true", help="replay: rebuild every projection")
    parser.add_argument("--keep-old", action="store_true", help="replay: keep the replaced tables in a schema")
    args = parser.parse_args(argv)
    _logging(os.environ.get("SKYJOBS_LOG_LEVEL", "INFO"))
    config = from_env()
    if args.command == "dev":
        asyncio.run(dev(config))
    elif args.command == "setup":
        asyncio.run(setup(config))
    elif args.command == "api":
        run_api(config)
    elif args.command in FAUST_APPS:
        run_faust(config, FAUST_APPS[args.command])
    elif args.command == "executor":
        run_executor(config)
    elif args.command == "projector":
        run_projector(config)
    elif args.command == "replay":
        run_replay(config, args.projection or [], args.all, args.keep_old)


if __name__ == "__main__":
    main()
