"""What the pool sends besides our own statements: no reset query when a connection goes
back to the pool, and no named prepared statements when the statement cache is off."""

from __future__ import annotations

from typing import Any

from interakt.vault.v1 import secret_service_pb2 as spb

from tests.support.resolve import RAW, resolve
from tests.support.rpc import resolver, secrets_admin
from tests.support.vault import VaultFactory, create_database
from vaultsvc.config import DatabaseSettings
from vaultsvc.storage.embedded import EmbeddedPostgres


async def test_releasing_a_connection_sends_nothing(make_vault: VaultFactory) -> None:
    vault = await make_vault()
    sent: list[str] = []

    def record(logged: Any) -> None:
        sent.append(logged.query)

    db = vault.runtime.db
    async with db.connection() as conn:
        raw = conn._con  # the connection behind the pool's proxy, kept across releases
        raw.add_query_logger(record)
        await conn.fetchval("SELECT 1")
    async with db.transaction() as conn:
        await conn.fetchval("SELECT 2")
    raw.remove_query_logger(record)
    # asyncpg's default reset would have sent "SELECT pg_advisory_unlock_all(); CLOSE ALL;
    # UNLISTEN *; RESET ALL" after each block.
    assert not [q for q in sent if "RESET" in q.upper() or "UNLISTEN" in q.upper()], sent
    assert "SELECT 1" in sent


async def _named_statements(vault: Any) -> int:
    async with vault.runtime.db.connection() as conn:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE '__asyncpg%'"
            )
        )


async def test_the_statement_cache_can_be_turned_off(
    make_vault: VaultFactory, pg: EmbeddedPostgres
) -> None:
    for size, expect_named in ((100, True), (0, False)):
        url = await create_database(pg)
        database = DatabaseSettings(
            url=url, pool_min_size=1, pool_max_size=1, statement_cache_size=size
        )
        vault = await make_vault(database_url=url, database=database, cache_enabled=False)
        await secrets_admin(vault).CreateSecret(spb.CreateSecretRequest(name="a", value="1"))
        for _ in range(2):
            assert await resolve(resolver(vault), [("f", "{{secret:a}}", RAW)]) == [("f", "1")]
        assert (await _named_statements(vault) > 0) is expect_named
