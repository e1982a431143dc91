"""What a resolve's cache miss costs the database, against REAL Postgres: the rows come
from one statement whose generic plan is kept (not planned again on every call)."""

from __future__ import annotations

import random

from interakt.vault.v1 import secret_service_pb2 as spb

from tests.support.rpc import secrets_admin
from tests.support.vault import VaultHandle
from vaultsvc.config import DatabaseSettings
from vaultsvc.storage.db import Database
from vaultsvc.storage.repository import RESOLVE_ROWS_SQL, Repository


async def test_the_miss_query_keeps_its_generic_plan_and_its_index_scans(
    vault: VaultHandle,
) -> None:
    names = [f"s_{i:02d}" for i in range(40)]
    secrets = secrets_admin(vault)
    for name in names:
        await secrets.CreateSecret(spb.CreateSecretRequest(name=name, value=f"v-{name}"))
    # One pool connection, so every call below prepares and runs on the same session.
    url = vault.database_url
    db = await Database.connect(url, DatabaseSettings(url=url, pool_min_size=1, pool_max_size=1))
    repo = Repository(db)
    try:
        rng = random.Random(7)
        for count in [5] * 12 + [1, 40, 3, 5, 5]:
            wanted = rng.sample(names, count)
            rows, configs = await repo.fetch_for_resolve([n.upper() for n in wanted], ["nope"])
            assert sorted(rows) == sorted(wanted) and configs == {}
            assert all(rows[n].name == n for n in wanted)
        async with db.connection() as conn:
            plans = await conn.fetchrow(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement = $1",
                RESOLVE_ROWS_SQL,
            )
            assert plans is not None
            # Postgres plans the first 5 executions for their values, then keeps the
            # generic plan when it costs no more: every later call skips planning.
            assert plans["custom_plans"] <= 5, dict(plans)
            assert plans["generic_plans"] >= 12, dict(plans)
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    "EXPLAIN (COSTS OFF) "
                    + RESOLVE_ROWS_SQL.replace("$1", "'{s_01}'::text[]").replace(
                        "$2", "'{}'::text[]"
                    )
                )
            )
        assert "secrets_name_key" in plan and "config_values_key_lower" in plan, plan
    finally:
        await db.close()
