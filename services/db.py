"""Postgres adapter: the pool, migrations (projections/sql/*.sql in order) and readiness."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import orjson

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent.parent / "projections" / "sql"
_LOCK_ID = 0x5B1_0B5  # advisory lock: one migrator at a time


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
                              schema="pg_catalog")


def _jsonb_binary(value: object) -> bytes:
    # jsonb's binary form is a version byte and the JSON text; bytes are taken as JSON text already.
    return b"\x01" + (value if isinstance(value, bytes) else orjson.dumps(value))


async def _init_bulk_connection(conn: asyncpg.Connection) -> None:
    """jsonb in binary (COPY needs it): Python values as JSON, bytes as JSON text already encoded."""
    await conn.set_type_codec("jsonb", encoder=_jsonb_binary, decoder=lambda v: orjson.loads(v[1:]),
                              schema="pg_catalog", format="binary")


async def connect(url: str, timeout: float = 60) -> asyncpg.Connection:
    """One connection, retried until Postgres answers or `timeout` passes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            conn = await asyncpg.connect(url)
            await _init_connection(conn)
            return conn
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.3)


async def _nothing_to_reset(conn: asyncpg.Connection) -> None:
    """A pooled connection carries no session state to undo: skyjobs sets none on them (`SET LOCAL`
    only, in transactions; no LISTEN, advisory lock or cursor: those use connections of their own).
    asyncpg's default reset would send `RESET ALL; UNLISTEN *; CLOSE ALL; SELECT
    pg_advisory_unlock_all()` on every release, a round trip per query (~10% of the API's CPU a
    job_info); an open transaction is still rolled back by asyncpg itself before this is called."""


async def create_pool(url: str, min_size: int = 2, max_size: int = 10, search_path: str | None = None,
                      settings: dict[str, str] | None = None, bulk: bool = False,
                      setup: Callable[[asyncpg.Connection], Awaitable[None]] | None = None) -> asyncpg.Pool:
    """A pool; `bulk` (the projector's) encodes jsonb in binary so that rows can be COPYed; `setup`
    runs once on every new connection (e.g. to create temporary tables)."""
    await (await connect(url)).close()  # waits until Postgres answers
    settings = {**(settings or {}), **({"search_path": search_path} if search_path else {})} or None
    codecs = _init_bulk_connection if bulk else _init_connection

    async def init(conn: asyncpg.Connection) -> None:
        await codecs(conn)
        if setup is not None:
            await setup(conn)

    pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=init,
                                     server_settings=settings, reset=_nothing_to_reset)
    assert pool is not None
    return pool


async def migrate_into(conn: asyncpg.Connection, schema: str) -> None:
    """Create every migrated table afresh in `schema` (for a replay); extensions stay in public."""
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.execute(f'SET search_path = "{schema}", public')
    try:
        for path in sorted(MIGRATIONS.glob("*.sql")):
            await conn.execute(path.read_text())
    finally:
        await conn.execute("SET search_path = public")


async def migrate(url: str) -> list[str]:
    """Apply the migrations not applied yet; return their names."""
    conn = await connect(url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        applied = []
        for path in sorted(MIGRATIONS.glob("*.sql")):
            if path.name in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
            applied.append(path.name)
            log.info("applied migration %s", path.name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
        await conn.close()
