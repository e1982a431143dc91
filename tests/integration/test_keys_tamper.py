"""Tamper and move detection, end to end: SQL changes a stored row, ResolveTemplate over
gRPC must answer DATA_LOSS (reason SECRET_UNREADABLE) naming only that secret, never
crash or return garbage, and every other secret keeps resolving.

Sealed values live in ``secret_versions`` (one row per version); ``CURRENT`` selects the
row of a secret's current version, the one a resolve opens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from interakt.vault.v1 import resolver_service_pb2_grpc as rgrpc
from interakt.vault.v1 import secret_service_pb2 as spb

from tests.support.keys import (
    create_secrets,
    expect_unreadable,
    keyring_spec,
    new_key,
    resolve,
    resolve_many,
)
from tests.support.rpc import expect_error, resolver, secrets_admin
from tests.support.vault import VaultFactory, VaultHandle
from vaultsvc.crypto import CIPHERTEXT_OVERHEAD, WRAPPED_DEK_SIZE

CURRENT = (
    "FROM secrets s WHERE s.id = v.secret_id AND s.name = $1 AND v.version = s.current_version"
)
TARGET, TARGET_VALUE = "target", "s3cr"
BYSTANDER, BYSTANDER_VALUE = "bystander", "other-value"


class _Tamperer:
    """A direct database connection whose every change the vault has heard of (by its
    change notification) before the next resolve: its cache never holds the old row."""

    def __init__(self, vault: VaultHandle, connection: Any) -> None:
        self.vault = vault
        self.connection = connection

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await self.connection.fetchrow(query, *args)

    async def fetch(self, query: str, *args: Any) -> Any:
        return await self.connection.fetch(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self.connection.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> Any:
        result = await self.connection.execute(query, *args)
        await self.vault.caught_up()
        return result


@pytest.fixture
async def conn(make_vault: VaultFactory) -> AsyncIterator[tuple[VaultHandle, Any]]:
    """A vault with two configured keys (k2 primary, k1 older), two secrets, and one
    direct database connection for the tampering."""
    k1, k2 = new_key("k1"), new_key("k2")
    vault = await make_vault(master_keys=keyring_spec(k2, k1))
    await create_secrets(vault, {TARGET: TARGET_VALUE, BYSTANDER: BYSTANDER_VALUE})
    connection = await asyncpg.connect(vault.database_url, timeout=10)
    try:
        yield vault, _Tamperer(vault, connection)
    finally:
        await connection.close(timeout=5)


async def _check_tampered(stub: rgrpc.ResolverServiceStub, culprit: str = TARGET) -> None:
    await expect_unreadable(
        stub,
        [culprit],
        culprit,
        not_named=[BYSTANDER],
        values=[TARGET_VALUE, BYSTANDER_VALUE],
    )
    assert await resolve(stub, BYSTANDER) == BYSTANDER_VALUE


async def test_every_byte_flip_and_field_change_is_data_loss(
    conn: tuple[VaultHandle, Any],
) -> None:
    vault, db = conn
    stub = resolver(vault)
    original = await db.fetchrow(
        "SELECT s.id, v.kek_id, v.wrapped_dek, v.ciphertext, v.version AS value_version "
        "FROM secret_versions v, secrets s WHERE s.id = v.secret_id AND s.name = $1",
        TARGET,
    )
    wrapped, ciphertext = bytes(original["wrapped_dek"]), bytes(original["ciphertext"])
    assert len(wrapped) == WRAPPED_DEK_SIZE
    assert len(ciphertext) == len(TARGET_VALUE) + CIPHERTEXT_OVERHEAD
    assert original["kek_id"] == "k2"

    async def restore() -> None:
        await db.execute(
            "UPDATE secrets SET id = $1, current_version = $2, name = $3 "
            "WHERE id = $1 OR name = $3 OR name = 'renamed'",
            original["id"],
            original["value_version"],
            TARGET,
        )
        await db.execute(
            "UPDATE secret_versions SET kek_id = $2, wrapped_dek = $3, ciphertext = $4, "
            "version = $5 WHERE secret_id = $1",
            original["id"],
            original["kek_id"],
            wrapped,
            ciphertext,
            original["value_version"],
        )
        assert await resolve(stub, TARGET) == TARGET_VALUE

    flips = 0
    for column, stored in (("wrapped_dek", wrapped), ("ciphertext", ciphertext)):
        for position in range(len(stored)):
            await db.execute(
                f"UPDATE secret_versions v SET {column} = "
                f"set_byte({column}, $2, get_byte({column}, $2) # 255) {CURRENT}",
                TARGET,
                position,
            )
            await _check_tampered(stub)
            await restore()
            flips += 1
    assert flips == WRAPPED_DEK_SIZE + len(ciphertext)

    def replaced(column: str, value: object) -> tuple[str, object]:
        return column, value

    other_changes = [
        replaced("wrapped_dek", wrapped[:-1]),
        replaced("wrapped_dek", wrapped + b"\x00"),
        replaced("wrapped_dek", b""),
        replaced("ciphertext", ciphertext[:-1]),
        replaced("ciphertext", ciphertext[1:]),
        replaced("ciphertext", ciphertext + b"\x00"),
        replaced("ciphertext", ciphertext[:CIPHERTEXT_OVERHEAD]),
        replaced("ciphertext", b""),
        replaced("kek_id", "k1"),  # another configured key
        replaced("kek_id", "nope"),  # a key nobody configured
        replaced("kek_id", ""),
    ]
    for column, value in other_changes:
        await db.execute(f"UPDATE secret_versions v SET {column} = $2 {CURRENT}", TARGET, value)
        await _check_tampered(stub)
        await restore()

    # The version is bound: the same row renumbered (and made current) does not open.
    for version in (original["value_version"] + 1, 2**62):
        await db.execute(
            "UPDATE secret_versions SET version = $2 WHERE secret_id = $1", original["id"], version
        )
        await db.execute("UPDATE secrets SET current_version = $2 WHERE name = $1", TARGET, version)
        await _check_tampered(stub)
        await restore()

    # Identity is bound too: a new row id, or a renamed row, does not open.
    await db.execute("UPDATE secrets SET id = gen_random_uuid() WHERE name = $1", TARGET)
    await _check_tampered(stub)
    await restore()
    await db.execute("UPDATE secrets SET name = 'renamed' WHERE name = $1", TARGET)
    await _check_tampered(stub, culprit="renamed")
    await restore()

    # A request naming a broken secret fails as a whole, naming only the broken one.
    await db.execute(
        "UPDATE secret_versions v SET ciphertext = "
        f"set_byte(ciphertext, 20, get_byte(ciphertext, 20) # 1) {CURRENT}",
        TARGET,
    )
    await expect_unreadable(
        stub,
        [BYSTANDER, TARGET],
        TARGET,
        not_named=[BYSTANDER],
        values=[TARGET_VALUE, BYSTANDER_VALUE],
    )
    await restore()

    assert await resolve_many(stub, [TARGET, BYSTANDER]) == {
        TARGET: TARGET_VALUE,
        BYSTANDER: BYSTANDER_VALUE,
    }


async def test_stale_fields_from_an_older_value_version_do_not_open(
    conn: tuple[VaultHandle, Any],
) -> None:
    """Writing version 1's encrypted fields onto the row at version 2 is detected."""
    from interakt.vault.v1 import secret_service_pb2 as spb
    from interakt.vault.v1 import secret_service_pb2_grpc as sgrpc

    vault, db = conn
    v1 = await db.fetchrow(
        f"SELECT v.wrapped_dek, v.ciphertext FROM secret_versions v, secrets s "
        f"WHERE {CURRENT.removeprefix('FROM secrets s WHERE ')}",
        TARGET,
    )
    await sgrpc.SecretServiceStub(vault.channel("admin")).UpdateSecret(
        spb.UpdateSecretRequest(name=TARGET, value="newer"), timeout=10
    )
    stub = resolver(vault)
    assert await resolve(stub, TARGET) == "newer"
    await db.execute(
        f"UPDATE secret_versions v SET wrapped_dek = $2, ciphertext = $3 {CURRENT}",
        TARGET,
        v1["wrapped_dek"],
        v1["ciphertext"],
    )
    await expect_unreadable(
        stub, [TARGET], TARGET, not_named=[BYSTANDER], values=["newer", TARGET_VALUE]
    )
    assert await resolve(stub, BYSTANDER) == BYSTANDER_VALUE


async def test_swapping_encrypted_fields_between_secrets_is_data_loss(
    make_vault: VaultFactory,
) -> None:
    """``aardvark`` is written under k1 (an older replica), ``badger`` and ``cheetah`` under
    k2; moving any combination of ciphertext, wrapped key and key id between aardvark and
    badger breaks both, and cheetah is never affected."""
    k1, k2 = new_key("k1"), new_key("k2")
    old_replica = await make_vault(master_keys=k1.spec)
    await create_secrets(old_replica, {"aardvark": "value-aardvark"})
    vault = await make_vault(
        database_url=old_replica.database_url, master_keys=keyring_spec(k2, k1)
    )
    await create_secrets(vault, {"badger": "value-badger", "cheetah": "value-cheetah"})
    values = {"aardvark": "value-aardvark", "badger": "value-badger", "cheetah": "value-cheetah"}
    stub = resolver(vault)
    db = await asyncpg.connect(vault.database_url, timeout=10)
    try:
        rows = {
            r["name"]: r
            for r in await db.fetch(
                "SELECT s.name, v.kek_id, v.wrapped_dek, v.ciphertext "
                "FROM secrets s JOIN secret_versions v ON v.secret_id = s.id"
            )
        }
        assert rows["aardvark"]["kek_id"] == "k1" and rows["badger"]["kek_id"] == "k2"

        async def put(name: str, source: str, columns: tuple[str, ...]) -> None:
            sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(columns))
            await db.execute(
                f"UPDATE secret_versions v SET {sets} {CURRENT}",
                name,
                *(rows[source][c] for c in columns),
            )
            await vault.caught_up()

        all_columns = ("kek_id", "wrapped_dek", "ciphertext")
        for columns in (
            ("ciphertext",),
            ("wrapped_dek",),
            ("wrapped_dek", "ciphertext"),
            ("kek_id", "wrapped_dek"),
            all_columns,
        ):
            await put("aardvark", "badger", columns)
            await put("badger", "aardvark", columns)
            for name in ("aardvark", "badger"):
                await expect_unreadable(
                    stub, [name], name, not_named=["cheetah"], values=list(values.values())
                )
            assert await resolve(stub, "cheetah") == "value-cheetah"
            await put("aardvark", "aardvark", all_columns)
            await put("badger", "badger", all_columns)
            assert await resolve_many(stub, ["aardvark", "badger", "cheetah"]) == values

        # Copying (not swapping) aardvark's encrypted fields onto badger breaks badger only.
        await put("badger", "aardvark", all_columns)
        await expect_unreadable(
            stub,
            ["badger"],
            "badger",
            not_named=["aardvark", "cheetah"],
            values=list(values.values()),
        )
        assert await resolve_many(stub, ["aardvark", "cheetah"]) == {
            "aardvark": "value-aardvark",
            "cheetah": "value-cheetah",
        }
        await put("badger", "badger", all_columns)
        assert await resolve_many(stub, ["aardvark", "badger", "cheetah"]) == values
    finally:
        await db.close(timeout=5)


async def _rollback_unreadable(vault: VaultHandle, version: int) -> None:
    await expect_error(
        secrets_admin(vault).RollbackSecret(
            spb.RollbackSecretRequest(name=TARGET, version=version), timeout=10
        ),
        grpc.StatusCode.DATA_LOSS,
        "SECRET_UNREADABLE",
    )


async def test_every_byte_of_an_old_version_is_checked_and_versions_cannot_swap(
    conn: tuple[VaultHandle, Any],
) -> None:
    """Old versions are sealed like the current one: a flipped byte in version 1 makes a
    rollback to it DATA_LOSS (and writes nothing); moving version 1's sealed fields onto
    version 2, or renumbering the rows, makes both unreadable."""
    vault, db = conn
    admin = secrets_admin(vault)
    await admin.UpdateSecret(spb.UpdateSecretRequest(name=TARGET, value="second"), timeout=10)
    stub = resolver(vault)
    secret_id = (await db.fetchrow("SELECT id FROM secrets WHERE name = $1", TARGET))["id"]
    versions = {
        r["version"]: r
        for r in await db.fetch(
            "SELECT version, kek_id, wrapped_dek, ciphertext FROM secret_versions "
            "WHERE secret_id = $1",
            secret_id,
        )
    }
    assert sorted(versions) == [1, 2]

    async def put(version: int, source: int) -> None:
        await db.execute(
            "UPDATE secret_versions SET kek_id = $3, wrapped_dek = $4, ciphertext = $5 "
            "WHERE secret_id = $1 AND version = $2",
            secret_id,
            version,
            versions[source]["kek_id"],
            versions[source]["wrapped_dek"],
            versions[source]["ciphertext"],
        )

    old_wrapped, old_ciphertext = versions[1]["wrapped_dek"], versions[1]["ciphertext"]
    for column, stored in (("wrapped_dek", old_wrapped), ("ciphertext", old_ciphertext)):
        for position in range(len(stored)):
            await db.execute(
                f"UPDATE secret_versions SET {column} = "
                f"set_byte({column}, $2, get_byte({column}, $2) # 255) "
                "WHERE secret_id = $1 AND version = 1",
                secret_id,
                position,
            )
            await _rollback_unreadable(vault, 1)
            await put(1, 1)
    current = await db.fetchval("SELECT current_version FROM secrets WHERE id = $1", secret_id)
    assert current == 2, "a failed rollback wrote a version"

    # Version 1's sealed fields on the current version 2: unreadable, never the old value.
    await put(2, 1)
    await expect_unreadable(
        stub, [TARGET], TARGET, not_named=[BYSTANDER], values=[TARGET_VALUE, "second"]
    )
    await put(2, 2)

    async def swap_version_numbers() -> None:
        for step in ("version + 100", "103 - version"):
            await db.execute(
                f"UPDATE secret_versions SET version = {step} WHERE secret_id = $1", secret_id
            )

    # The two rows swapped by renumbering: neither opens.
    await swap_version_numbers()
    await expect_unreadable(
        stub, [TARGET], TARGET, not_named=[BYSTANDER], values=[TARGET_VALUE, "second"]
    )
    await _rollback_unreadable(vault, 1)
    await swap_version_numbers()
    assert await resolve(stub, TARGET) == "second"
    rolled = await admin.RollbackSecret(spb.RollbackSecretRequest(name=TARGET, version=1))
    assert rolled.current_version == 3
    assert await resolve(stub, TARGET) == TARGET_VALUE
    assert await resolve(stub, BYSTANDER) == BYSTANDER_VALUE
