"""Upgrading to versioned secrets: a database written by the schema before the versions
migration keeps every secret resolvable, and `keys rewrap` then covers every retained
version (data keys and fingerprints), so the old master key can be removed."""

from __future__ import annotations

import uuid

import asyncpg
from interakt.vault.v1 import secret_service_pb2 as spb

from tests.support.keys import kek_counts, keyring_spec, new_key, resolve, resolve_all
from tests.support.rpc import resolver, secrets_admin
from tests.support.vault import create_database, make_settings, sql, vault_server
from vaultsvc.cli.keys import rewrap_all
from vaultsvc.crypto import Envelope, SecretContext, key_check_value, parse_master_keys
from vaultsvc.storage.db import migration_files
from vaultsvc.storage.embedded import EmbeddedPostgres

VERSIONS_MIGRATION = "secret_versions"


def migrations_before_versions() -> list[tuple[int, str, str]]:
    """Every migration older than the one that introduces versions (by name, so the test
    does not depend on its number)."""
    found = migration_files()
    position = [name for _, name, _ in found].index(VERSIONS_MIGRATION)
    assert position >= 1
    return found[:position]


async def test_old_schema_with_data_migrates_and_resolves(pg: EmbeddedPostgres) -> None:
    url = await create_database(pg)
    k1 = new_key("k1")
    keyring = parse_master_keys(k1.spec)
    envelope = Envelope(keyring)
    # value_version > 1: secrets updated before versions existed.
    old_secrets = {f"old_{n:02d}": (f"value-{n}-{'x' * n}", 1 + n % 4) for n in range(25)}
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, name, text in migrations_before_versions():
            await conn.execute(text)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
        await conn.execute(
            "INSERT INTO master_keys (key_id, check_value, wrap_count) VALUES ($1, $2, $3)",
            "k1",
            key_check_value(keyring.get("k1")),
            len(old_secrets),
        )
        for name, (value, value_version) in old_secrets.items():
            secret_id = uuid.uuid4()
            sealed = envelope.seal(
                value.encode(), SecretContext(str(secret_id), name, value_version)
            )
            await conn.execute(
                """INSERT INTO secrets (id, name, description, value_version, kek_id,
                                        wrapped_dek, ciphertext, etag, create_time, update_time)
                   VALUES ($1, $2, 'from before', $3, $4, $5, $6, 'e0', now(), now())""",
                secret_id,
                name,
                value_version,
                sealed.key_id,
                sealed.wrapped_dek,
                sealed.ciphertext,
            )
        await conn.execute(
            "UPDATE vault_state SET total_secrets = $1, last_update_time = now()",
            len(old_secrets),
        )
    finally:
        await conn.close(timeout=5)

    expected = {name: value for name, (value, _) in old_secrets.items()}
    async with vault_server(url, k1.spec) as vault:
        await resolve_all(vault, expected)
        admin = secrets_admin(vault)
        for name, (_, value_version) in list(old_secrets.items())[:5]:
            listing = await admin.ListSecretVersions(spb.ListSecretVersionsRequest(name=name))
            assert [(v.version, v.current) for v in listing.versions] == [(value_version, True)]
            got = await admin.GetSecret(spb.GetSecretRequest(name=name))
            assert got.current_version == value_version
        # Versions carried over get their fingerprints from the background job.
        await vault.runtime.purger.run_once()
        reply = await admin.IdentifySecretValue(
            spb.IdentifySecretValueRequest(value=expected["old_07"])
        )
        assert [(m.name, m.version, m.current) for m in reply.matches] == [
            ("old_07", old_secrets["old_07"][1], True)
        ]
        # And they take new versions like any other secret.
        await admin.UpdateSecret(spb.UpdateSecretRequest(name="old_03", value="newer"))
        await admin.RollbackSecret(
            spb.RollbackSecretRequest(name="old_03", version=old_secrets["old_03"][1])
        )
        assert await resolve(resolver(vault), "old_03") == expected["old_03"]
        stats = await admin.GetVaultStats(spb.GetVaultStatsRequest())
        assert stats.total_secrets == len(old_secrets)


async def test_rewrap_covers_every_retained_version(pg: EmbeddedPostgres) -> None:
    url = await create_database(pg)
    k1, k2 = new_key("k1"), new_key("k2")
    async with vault_server(url, k1.spec) as vault:
        admin = secrets_admin(vault)
        await admin.CreateSecret(spb.CreateSecretRequest(name="multi", value="first"))
        for value in ("second", "third"):
            await admin.UpdateSecret(spb.UpdateSecretRequest(name="multi", value=value))
        await admin.CreateSecret(spb.CreateSecretRequest(name="single", value="only"))
    assert await kek_counts(url) == {"k1": 4}

    async with vault_server(url, keyring_spec(k2, k1)):
        pass  # registers k2 as every replica would, before rewrap
    settings, _, _ = make_settings(url, master_keys=keyring_spec(k2, k1))
    outcome = await rewrap_all(settings, batch_size=2)
    assert outcome.rewrapped == 4 and outcome.remaining == 0 and not outcome.unreadable
    assert await kek_counts(url) == {"k2": 4}
    rows = await sql(url, "SELECT DISTINCT fingerprint_key_id FROM secret_versions")
    assert [r["fingerprint_key_id"] for r in rows] == ["k2"]

    # k1 is gone: every old version still rolls back and is still identified.
    async with vault_server(url, k2.spec) as vault:
        admin = secrets_admin(vault)
        reply = await admin.IdentifySecretValue(spb.IdentifySecretValueRequest(value="first"))
        assert [(m.name, m.version) for m in reply.matches] == [("multi", 1)]
        await admin.RollbackSecret(spb.RollbackSecretRequest(name="multi", version=1))
        await resolve_all(vault, {"multi": "first", "single": "only"})
