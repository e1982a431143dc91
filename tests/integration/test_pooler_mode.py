"""``database.pooler = transaction`` on a real Postgres (the embedded one, PG 18; the
cluster test runs the same against pgbouncer and PG 15): no startup parameter but
``application_name``, no prepared statement, every unit of work a transaction bounded by
``SET LOCAL`` timeouts that never outlive it."""

from __future__ import annotations

import pytest

from tests.support.vault import create_database
from vaultsvc.config import DatabaseSettings
from vaultsvc.domain import AuditRecord
from vaultsvc.errors import DeadlineExceeded, Reason
from vaultsvc.storage.audit_store import AuditStore
from vaultsvc.storage.db import Database, migrate
from vaultsvc.storage.embedded import EmbeddedPostgres

_SESSION = (
    "SELECT current_setting('statement_timeout') AS statement, "
    "current_setting('idle_in_transaction_session_timeout') AS idle, "
    "(SELECT count(*) FROM pg_prepared_statements) AS prepared"
)
_STARTUP = "SELECT s.setting, s.source FROM pg_settings s WHERE s.name = 'statement_timeout'"


async def test_every_unit_is_a_transaction_with_local_timeouts(pg: EmbeddedPostgres) -> None:
    url = await create_database(pg)
    settings = DatabaseSettings(
        url=url, pooler="transaction", statement_timeout_ms=1500, pool_min_size=1, pool_max_size=1
    )
    db = await Database.connect(url, settings)
    try:
        assert db.behind_pooler and db.direct_url == url
        async with db.connection() as conn:
            assert conn.is_in_transaction()
            row = await conn.fetchrow(_SESSION)
            assert (row["statement"], row["idle"]) == ("1500ms", "30s")
            startup = await conn.fetchrow(_STARTUP)
        # Set for the transaction only, never from the connection's startup packet.
        assert startup["source"] != "client", startup
        async with db.transaction(isolation="serializable") as conn:
            row = await conn.fetchrow(_SESSION)
            assert row["statement"] == "1500ms"
            assert await conn.fetchval("SHOW transaction_isolation") == "serializable"
        async with db.connection(timeout=None) as conn:  # migrations, as at start-up
            await migrate(conn)
        # The same (only) pool connection, outside any transaction: nothing stayed behind
        # for the next client of a pooler's server connection.
        async with db.pool.acquire() as raw:
            row = await raw.fetchrow(_SESSION)
            assert (row["statement"], row["prepared"]) == ("0", 0)
        with pytest.raises(DeadlineExceeded) as timed_out:
            async with db.connection() as conn:
                await conn.execute("SELECT pg_sleep(5)")
        assert timed_out.value.reason is Reason.DATABASE_TIMEOUT
    finally:
        await db.close()


async def test_direct_mode_keeps_its_startup_parameters(pg: EmbeddedPostgres) -> None:
    url = await create_database(pg)
    db = await Database.connect(url, DatabaseSettings(url=url, statement_timeout_ms=1500))
    try:
        assert not db.behind_pooler
        async with db.connection() as conn:
            assert not conn.is_in_transaction()
            startup = await conn.fetchrow(_STARTUP)
            assert (startup["setting"], startup["source"]) == ("1500", "client")
    finally:
        await db.close()


async def test_the_audit_store_behind_a_pooler_commits_in_its_own_transaction(
    pg: EmbeddedPostgres,
) -> None:
    url = await create_database(pg)
    db = await Database.connect(url, DatabaseSettings(url=url, pooler="transaction"))
    store = AuditStore(url, connect_timeout=5, write_timeout=2, behind_pooler=True)
    try:
        async with db.connection(timeout=None) as conn:
            await migrate(conn)
        record = AuditRecord(principal="p", method="/m", request_id="r-1", peer="ipv4:127.0.0.1:1")
        await store.insert([record, record])
        assert (store.statements, store.events) == (1, 2)
        conn = await store._connection()
        assert not conn.is_in_transaction()
        startup = await conn.fetchrow(_STARTUP)
        assert startup["source"] != "client"
        assert await conn.fetchval("SELECT count(*) FROM pg_prepared_statements") == 0
        async with db.connection() as conn:
            assert await conn.fetchval("SELECT count(*) FROM audit_events") == 2
    finally:
        await store.close()
        await db.close()
