"""asyncpg pool, bounded waits, error translation and plain-SQL migrations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import asyncpg

from vaultsvc.config import DatabaseSettings
from vaultsvc.errors import Reason, VaultError
from vaultsvc.storage.breaker import CircuitBreaker
from vaultsvc.storage.errors import is_connection_failure, log_database_error, storage_error
from vaultsvc.telemetry import tracing

_log = logging.getLogger("vaultsvc.storage")

#: Serialises migrations across replicas starting at the same time.
MIGRATION_LOCK_ID = 0x7661756C7431  # "vault1"
_MIGRATION_FILE = re.compile(r"^V(\d+)__([a-z0-9_]+)\.sql$")

_DEFAULT = object()


@asynccontextmanager
async def translate_db_errors() -> AsyncIterator[None]:
    """Turn database failures into domain errors (see :mod:`vaultsvc.storage.errors`).

    Postgres error texts can quote row data, so none of it reaches the client; errors that
    are not mapped keep propagating (INTERNAL with a request id) after their SQLSTATE class
    is logged.
    """
    try:
        yield
    except VaultError:
        raise
    except Exception as exc:
        mapped = storage_error(exc)
        if mapped is None:
            log_database_error(exc, what="unexpected database error")
            raise
        if mapped.reason is not Reason.DATABASE_UNAVAILABLE:
            log_database_error(exc, what="database refused the operation")
        raise mapped from None


async def release_without_reset_query(conn: Any) -> None:
    """What a pooled connection needs on release: nothing beyond asyncpg's own rollback of
    an open transaction (which it always does first, and which costs no round trip when
    none is open).

    asyncpg's default reset sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release: one round trip per query. Pooled connections hold none
    of that state: advisory locks are transaction-scoped (``pg_advisory_xact_lock``),
    cursors only live inside transactions, LISTEN happens on the listener's own connection
    (:mod:`vaultsvc.storage.notify`), and settings come from the connect-time
    ``server_settings`` or ``SET LOCAL`` (never a session ``SET``).
    """


def session_timeouts(settings: DatabaseSettings) -> dict[str, str]:
    """The server-side bounds every pool connection runs under."""
    return {
        "statement_timeout": str(settings.statement_timeout_ms),
        "idle_in_transaction_session_timeout": str(max(settings.statement_timeout_ms * 3, 30_000)),
    }


def set_local_sql(values: dict[str, str]) -> str:
    """``SET LOCAL`` for each of ``values`` (integers), as one simple-protocol round trip."""
    return "; ".join(f"SET LOCAL {name} = {int(value)}" for name, value in values.items())


class Database:
    """One asyncpg pool; every wait on it is bounded end to end, and a circuit breaker
    refuses calls at once while the database is known down.

    A unit of work (:meth:`connection`, :meth:`transaction`) gets at most
    ``operation_timeout`` seconds for everything: waiting for a pool connection, its
    statements, the commit and the clean-up; a call's own deadline (the caller's
    ``asyncio.timeout``) shortens it. When the bound or the deadline passes, or the
    connection breaks, the connection is *terminated* rather than cancelled gracefully:
    asyncpg's cancel request and its reset wait on the server, which is exactly what a
    frozen database never answers.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: DatabaseSettings,
        url: str = "",
        direct_url: str = "",
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.url = url
        """Where the pool connects, for the connections kept outside it (the audit writer's);
        empty when unknown."""
        self.direct_url = direct_url or url
        """Postgres itself, never a transaction pooler: for what needs a session (LISTEN)."""
        self.behind_pooler = settings.pooler == "transaction"
        """``url`` is a transaction pooler (pgbouncer ``pool_mode = transaction``): no
        prepared statements, no startup parameters but ``application_name``, and every unit of
        work inside one transaction whose timeouts are set by ``SET LOCAL`` (a session
        ``SET`` would stay on a server connection the pooler hands to other clients)."""
        self._set_local = set_local_sql(session_timeouts(settings))
        self.breaker = CircuitBreaker(
            self._probe,
            failure_threshold=settings.breaker_failures,
            probe_interval=settings.breaker_probe_interval,
        )

    @classmethod
    async def connect(cls, url: str, settings: DatabaseSettings) -> Database:
        pooled = settings.pooler == "transaction"
        server_settings = {"application_name": "vaultsvc"}
        if not pooled:
            server_settings.update(session_timeouts(settings))
        pool = await asyncio.wait_for(
            asyncpg.create_pool(
                url,
                min_size=settings.pool_min_size,
                max_size=settings.pool_max_size,
                timeout=settings.connect_timeout,
                command_timeout=settings.command_timeout,
                max_inactive_connection_lifetime=300,
                statement_cache_size=0 if pooled else settings.statement_cache_size,
                reset=release_without_reset_query,
                server_settings=server_settings,
            ),
            timeout=settings.connect_timeout * 2 + 1,
        )
        return cls(pool, settings, url, settings.direct_url or url)

    @asynccontextmanager
    async def connection(self, *, timeout: Any = _DEFAULT) -> AsyncIterator[Any]:
        """A pool connection for one unit of work, bounded by ``operation_timeout``
        (``timeout=None``: no overall bound, for migrations at start-up). Behind a
        transaction pooler it is also one transaction (see :meth:`transaction`)."""
        self.breaker.check()
        async with tracing.span("vault.db"), translate_db_errors(), self._bounded(timeout) as conn:
            if self.behind_pooler:
                async with self._in_transaction(conn, "read_committed"):
                    yield conn
            else:
                yield conn

    @asynccontextmanager
    async def transaction(self, *, isolation: str = "read_committed") -> AsyncIterator[Any]:
        """One transaction, committed when the block ends normally and rolled back when it
        raises; a connection that broke or timed out is terminated instead (Postgres rolls
        back an aborted session itself)."""
        self.breaker.check()
        async with (
            translate_db_errors(),
            self._bounded(_DEFAULT) as conn,
            self._in_transaction(conn, isolation),
        ):
            yield conn

    @asynccontextmanager
    async def _in_transaction(self, conn: Any, isolation: str) -> AsyncIterator[None]:
        tx = conn.transaction(isolation=isolation)
        await tx.start()
        try:
            if self.behind_pooler:
                await conn.execute(self._set_local)
            yield
        except BaseException as exc:
            if not conn.is_closed() and not _poisons(exc):
                await tx.rollback()
            raise
        await tx.commit()

    @asynccontextmanager
    async def _bounded(self, timeout: Any) -> AsyncIterator[Any]:
        bound = self.settings.operation_timeout if timeout is _DEFAULT else timeout
        loop = asyncio.get_running_loop()
        deadline = None if bound is None else loop.time() + bound
        conn: Any = None
        try:
            async with asyncio.timeout_at(deadline):
                conn = await self.pool.acquire()
                try:
                    yield conn
                except BaseException as exc:
                    if _poisons(exc):
                        _terminate(conn)  # never wait on the server to clean up
                        conn = None
                    raise
                await self.pool.release(conn, timeout=_remaining(loop, deadline))
                conn = None
        except BaseException as exc:
            if conn is not None:
                if _poisons(exc):
                    _terminate(conn)
                else:
                    await _release_within(self.pool, conn, loop, deadline)
            if isinstance(exc, TimeoutError) or is_connection_failure(exc):
                # The bound ran out, or the database cannot be reached.
                self.breaker.record_failure()
            elif isinstance(exc, asyncio.CancelledError):
                # Cut short by the caller (its deadline, or a cancelled RPC): no proof the
                # database is down, but worth one background probe.
                self.breaker.suspect()
            else:
                self.breaker.record_success()  # the database answered (with an error)
            raise
        self.breaker.record_success()

    async def _probe(self) -> None:
        """One round trip on a pool connection, bounded like any unit of work."""
        async with translate_db_errors(), self._bounded(_DEFAULT) as conn:
            await conn.fetchval("SELECT 1")

    async def close(self, timeout: float = 5.0) -> None:
        await self.breaker.close()
        try:
            await asyncio.wait_for(self.pool.close(), timeout=timeout)
        except Exception:
            self.pool.terminate()


def _remaining(loop: asyncio.AbstractEventLoop, deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - loop.time(), 0.0)


def _terminate(conn: Any) -> None:
    """Close the socket now; asyncpg returns the slot to the pool, which reconnects."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


async def _release_within(
    pool: asyncpg.Pool, conn: Any, loop: asyncio.AbstractEventLoop, deadline: float | None
) -> None:
    """Return a healthy ``conn`` to the pool (its reset is a round trip) without outliving
    the unit's deadline; the exception being handled stays the one that propagates."""
    remaining = _remaining(loop, deadline)
    if remaining is not None and remaining <= 0:
        _terminate(conn)
        return
    try:
        async with asyncio.timeout(remaining):
            await pool.release(conn, timeout=remaining)
    except asyncio.CancelledError:
        _terminate(conn)
        raise
    except Exception:
        _terminate(conn)


def _poisons(exc: BaseException) -> bool:
    """After this exception the connection may be mid-statement or broken: terminate it."""
    return isinstance(exc, asyncio.CancelledError) or is_connection_failure(exc)


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
