"""Backup and restore, drilled exactly as README "Production → Backups" describes it.

A live vault's database is dumped with ``pg_dump --format=custom`` while the vault runs,
restored with ``pg_restore`` into a fresh database, and a vault started on the copy with the
same master keys resolves every secret to its value. With any other key (same id and other
material, or another id) ``serve`` refuses to start: a clear error, a non-zero exit, and
nothing written to the restored database.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from pathlib import Path

from interakt.vault.v1 import secret_service_pb2 as spb

from tests.support.cli import SERVE_TIMEOUT, run_cli, serve_env
from tests.support.keys import (
    assert_no_key_material,
    create_secrets,
    db_fingerprint,
    keyring_spec,
    new_key,
    resolve_all,
)
from tests.support.rpc import secrets_admin
from tests.support.vault import create_database, vault_server
from vaultsvc.storage.embedded import EmbeddedPostgres


async def postgres_tool(pg: EmbeddedPostgres, program: str, *args: str) -> None:
    """``pg_dump`` / ``pg_restore`` of the embedded Postgres (the same major version)."""
    result = await asyncio.to_thread(
        subprocess.run,
        [str(pg.bin(program)), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{program}: {result.stderr}"


async def test_pg_dump_of_a_live_vault_restores_and_only_its_master_keys_read_it(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    old, primary = new_key("k-old"), new_key("k-new")
    keys = keyring_spec(primary, old)
    source = await create_database(pg)
    # Secrets under a retired key and under the primary, one with several versions.
    values = {f"drill_{i:03d}": f"value {i} ✓ {secrets.token_hex(8)}" for i in range(40)}
    async with vault_server(source, old.spec) as vault:
        await create_secrets(vault, dict(list(values.items())[:20]))
    dump = tmp_path / "vault.dump"
    async with vault_server(source, keys) as vault:
        await create_secrets(vault, dict(list(values.items())[20:]))
        stub = secrets_admin(vault)
        for round_ in range(3):
            values["drill_000"] = f"rotated value {round_}"
            await stub.UpdateSecret(
                spb.UpdateSecretRequest(name="drill_000", value=values["drill_000"]), timeout=10
            )
        # The dump is taken while the vault serves (pg_dump reads one consistent snapshot).
        await postgres_tool(
            pg, "pg_dump", "--format=custom", "--compress=0", "--file", str(dump), source
        )
        await resolve_all(vault, values)

    raw = dump.read_bytes()
    for value in values.values():
        assert value.encode() not in raw, "a secret value is in the dump in plaintext"
    assert_no_key_material(raw.decode("latin-1"), old, primary)

    restored = await create_database(pg)
    await postgres_tool(
        pg, "pg_restore", "--no-owner", "--exit-on-error", "--dbname", restored, str(dump)
    )
    before = await db_fingerprint(restored)

    # Any other key: serve refuses to start, says why, and writes nothing.
    impostor = new_key("k-new")  # the primary's id, other material
    stranger = new_key("k-other")  # an id the database has never seen
    for wrong, expected in (
        (keyring_spec(impostor, old), "master key 'k-new' does not match"),
        (stranger.spec, "master key 'k-new' still wraps"),
    ):
        done = await run_cli(["serve"], serve_env(restored, wrong, tmp_path), SERVE_TIMEOUT)
        assert done.returncode == 2, done.output  # EXIT_CONFIG: start-up refused
        assert "vaultsvc: error:" in done.stderr and expected in done.stderr, done.stderr
        assert "vault listening" not in done.output
        assert_no_key_material(done.output, old, primary, impostor, stranger)
    assert await db_fingerprint(restored) == before

    # The same keys: every secret, at its current version.
    async with vault_server(restored, keys) as vault:
        await resolve_all(vault, values)
