"""Name search is served by indexes (the plan, not the clock, is asserted)."""

from __future__ import annotations

from interakt.vault.v1 import secret_service_pb2 as pb
from interakt.vault.v1 import secret_service_pb2_grpc as pbg

from tests.support.vault import VaultHandle


async def test_search_and_paging_use_indexes(vault: VaultHandle) -> None:
    await vault.sql(
        """INSERT INTO secrets (id, name, description, current_version, etag, create_time,
                                update_time)
           SELECT gen_random_uuid(), 'svc_' || lpad(i::text, 6, '0') || '_key', '', 1,
                  md5(i::text), now(), now()
             FROM generate_series(1, 30000) AS i"""
    )
    await vault.sql("UPDATE vault_state SET total_secrets = 30000")
    await vault.sql("ANALYZE secrets")

    substring = await vault.sql(
        "EXPLAIN SELECT count(*) FROM secrets WHERE name_key LIKE '%012345%'"
    )
    plan = "\n".join(r[0] for r in substring)
    assert "secrets_name_trgm" in plan, plan

    ordered = await vault.sql(
        "EXPLAIN SELECT name FROM secrets WHERE name_key > 'svc_010000' ORDER BY name_key LIMIT 51"
    )
    plan = "\n".join(r[0] for r in ordered)
    assert "secrets_name_key" in plan and "Sort" not in plan, plan

    # And the RPC agrees with the rows.
    stub = pbg.SecretServiceStub(vault.channel("admin"))
    found = await stub.ListSecrets(pb.ListSecretsRequest(name_contains="01234"))
    assert found.total_size == 11  # svc_001234_key and svc_012340..012349
    assert [s.name for s in found.secrets][:2] == ["svc_001234_key", "svc_012340_key"]
