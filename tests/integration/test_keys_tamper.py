"""Tamper and move detection, end to end: SQL changes a stored row, ResolveTemplate over
gRPC must answer DATA_LOSS (reason SECRET_UNREADABLE) naming only that secret, never
crash or return garbage, and every other secret keeps resolving.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from interakt.vault.v1 import resolver_service_pb2_grpc as rgrpc

from tests.support.keys import (
    create_secrets,
    expect_unreadable,
    keyring_spec,
    new_key,
    resolve,
    resolve_many,
)
from tests.support.rpc import resolver
from tests.support.vault import VaultFactory, VaultHandle
from vaultsvc.crypto import CIPHERTEXT_OVERHEAD, WRAPPED_DEK_SIZE

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
        "SELECT id, kek_id, wrapped_dek, ciphertext, value_version FROM secrets WHERE name = $1",
        TARGET,
    )
    wrapped, ciphertext = bytes(original["wrapped_dek"]), bytes(original["ciphertext"])
    assert len(wrapped) == WRAPPED_DEK_SIZE
    assert len(ciphertext) == len(TARGET_VALUE) + CIPHERTEXT_OVERHEAD
    assert original["kek_id"] == "k2"

    async def restore() -> None:
        await db.execute(
            "UPDATE secrets SET id = $1, kek_id = $2, wrapped_dek = $3, ciphertext = $4, "
            "value_version = $5, name = $6 WHERE id = $1 OR name = $6 OR name = 'renamed'",
            original["id"],
            original["kek_id"],
            wrapped,
            ciphertext,
            original["value_version"],
            TARGET,
        )
        assert await resolve(stub, TARGET) == TARGET_VALUE

    flips = 0
    for column, stored in (("wrapped_dek", wrapped), ("ciphertext", ciphertext)):
        for position in range(len(stored)):
            await db.execute(
                f"UPDATE secrets SET {column} = "
                f"set_byte({column}, $2, get_byte({column}, $2) # 255) WHERE name = $1",
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
        replaced("value_version", original["value_version"] + 1),
        replaced("value_version", 2**62),
    ]
    for column, value in other_changes:
        await db.execute(f"UPDATE secrets SET {column} = $2 WHERE name = $1", TARGET, value)
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
        "UPDATE secrets SET ciphertext = set_byte(ciphertext, 20, get_byte(ciphertext, 20) # 1)"
        " WHERE name = $1",
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
    v1 = await db.fetchrow("SELECT wrapped_dek, ciphertext FROM secrets WHERE name = $1", TARGET)
    await sgrpc.SecretServiceStub(vault.channel("admin")).UpdateSecret(
        spb.UpdateSecretRequest(name=TARGET, value="newer"), timeout=10
    )
    stub = resolver(vault)
    assert await resolve(stub, TARGET) == "newer"
    await db.execute(
        "UPDATE secrets SET wrapped_dek = $2, ciphertext = $3 WHERE name = $1",
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
            for r in await db.fetch("SELECT name, kek_id, wrapped_dek, ciphertext FROM secrets")
        }
        assert rows["aardvark"]["kek_id"] == "k1" and rows["badger"]["kek_id"] == "k2"

        async def put(name: str, source: str, columns: tuple[str, ...]) -> None:
            sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(columns))
            await db.execute(
                f"UPDATE secrets SET {sets} WHERE name = $1",
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
