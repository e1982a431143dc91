"""asyncpg pool, bounded waits, error translation and plain-SQL migrations."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import asyncpg

from vaultsvc.config import DatabaseSettings
from vaultsvc.errors import DeadlineExceeded, Reason, Unavailable

_log = logging.getLogger("vaultsvc.storage")

#: Serialises migrations across replicas starting at the same time.
MIGRATION_LOCK_ID = 0x7661756C7431  # "vault1"
_MIGRATION_FILE = re.compile(r"^V(\d+)__([a-z0-9_]+)\.sql$")

#: Exceptions that mean "the database is not reachable right now" rather than a bug.
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


@asynccontextmanager
async def translate_db_errors() -> AsyncIterator[None]:
    """Turn connection loss and timeouts into UNAVAILABLE / DEADLINE_EXCEEDED.

    Postgres error texts can quote row data, so none of it reaches the client.
    """
    try:
        yield
    except asyncpg.QueryCanceledError:
        raise DeadlineExceeded(
            "database statement timed out", reason=Reason.DATABASE_TIMEOUT
        ) from None
    except TimeoutError:
        raise Unavailable(
            "database did not answer in time", reason=Reason.DATABASE_UNAVAILABLE
        ) from None
    except _UNAVAILABLE_ERRORS:
        raise Unavailable("database unavailable", reason=Reason.DATABASE_UNAVAILABLE) from None


async def release_without_reset_query(conn: Any) -> None:
    """What a pooled connection needs on release: nothing beyond asyncpg's own rollback of
    an open transaction (which it always does first, and which costs no round trip when
    none is open).

    asyncpg's default reset sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release: one round trip per query. Pooled connections hold none
    of that state: advisory locks are transaction-scoped (``pg_advisory_xact_lock``),
    cursors only live inside transactions, LISTEN happens on the listener's own connection
    (:mod:`vaultsvc.storage.notify`), and session settings come from the connect-time
    ``server_settings`` (never ``SET``).
    """


class Database:
    """One asyncpg pool with bounded acquire, command and statement timeouts."""

    def __init__(self, pool: asyncpg.Pool, settings: DatabaseSettings, url: str = "") -> None:
        self.pool = pool
        self.settings = settings
        self.url = url
        """Where the pool connects, for the connections kept outside it (the audit writer's
        and the change listener's); empty when unknown."""

    @classmethod
    async def connect(cls, url: str, settings: DatabaseSettings) -> Database:
        pool = await asyncio.wait_for(
            asyncpg.create_pool(
                url,
                min_size=settings.pool_min_size,
                max_size=settings.pool_max_size,
                timeout=settings.connect_timeout,
                command_timeout=settings.command_timeout,
                max_inactive_connection_lifetime=300,
                statement_cache_size=settings.statement_cache_size,
                reset=release_without_reset_query,
                server_settings={
                    "application_name": "vaultsvc",
                    "statement_timeout": str(settings.statement_timeout_ms),
                    "idle_in_transaction_session_timeout": str(
                        max(settings.statement_timeout_ms * 3, 30_000)
                    ),
                },
            ),
            timeout=settings.connect_timeout * 2 + 1,
        )
        return cls(pool, settings, url)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        async with (
            translate_db_errors(),
            self.pool.acquire(timeout=self.settings.acquire_timeout) as conn,
        ):
            yield conn

    @asynccontextmanager
    async def transaction(self, *, isolation: str = "read_committed") -> AsyncIterator[Any]:
        async with self.connection() as conn, conn.transaction(isolation=isolation):
            yield conn

    async def close(self, timeout: float = 5.0) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), timeout=timeout)
        except Exception:
            self.pool.terminate()


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every bundled migration, in order."""
    found: list[tuple[int, str, str]] = []
    folder = resources.files("vaultsvc.storage").joinpath("migrations")
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migration versions must be 1..n without gaps, found {versions}")
    return found


async def schema_exists(conn: Any) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL"))


async def migrate(conn: Any) -> list[str]:
    """Apply pending migrations in one transaction, holding an advisory lock."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer     PRIMARY KEY,
                   name       text        NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migration_files():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied.append(f"V{version}__{name}")
            _log.info("applied migration", extra={"migration": f"V{version}__{name}"})
    return applied
