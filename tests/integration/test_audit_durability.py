"""Group-committed audit survives ``kill -9`` of the vault and of Postgres: every resolve
a client saw succeed has its event (see tests/faults/audit_durability.py)."""

from __future__ import annotations

from pathlib import Path

from tests.faults.audit_durability import postgres_kill, vault_kill
from vaultsvc.storage.embedded import EmbeddedPostgres


async def test_vault_kill_9_loses_no_answered_resolve(
    private_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    outcome = await vault_kill(private_pg, tmp_path, seconds=2.0)
    assert len(outcome.ok_request_ids) > 50, outcome.seen()
    assert outcome.lost == [], f"{len(outcome.lost)} of {len(outcome.ok_request_ids)} lost"


async def test_postgres_kill_9_loses_no_answered_resolve(
    private_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    outcome = await postgres_kill(private_pg, tmp_path, seconds=2.0)
    assert len(outcome.ok_request_ids) > 50, outcome.seen()
    assert outcome.lost == [], f"{len(outcome.lost)} of {len(outcome.ok_request_ids)} lost"
