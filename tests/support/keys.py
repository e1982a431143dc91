"""Master keys for the key lifecycle tests: test keys, leak checks, bulk secrets and
resolves, and fingerprints of everything a write could change in a database."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rgrpc
from interakt.vault.v1 import secret_service_pb2 as spb

from tests.support.rpc import error_info, resolver, secrets_admin
from tests.support.vault import VaultHandle, sql
from vaultsvc.crypto import generate_master_key


@dataclass(frozen=True)
class Key:
    """One test master key: its id, base64 text and raw bytes (to look for leaks)."""

    key_id: str
    b64: str

    @property
    def spec(self) -> str:
        return f"{self.key_id}:{self.b64}"

    @property
    def leak_patterns(self) -> list[str]:
        raw = base64.b64decode(self.b64)
        urlsafe = base64.urlsafe_b64encode(raw).decode()
        return [self.b64, self.b64.rstrip("="), urlsafe.rstrip("="), raw.hex(), raw.hex().upper()]


def new_key(key_id: str) -> Key:
    _, b64 = generate_master_key()
    return Key(key_id, b64)


def keyring_spec(*keys: Key) -> str:
    return ",".join(k.spec for k in keys)


def assert_no_key_material(text: str, *keys: Key) -> None:
    for key in keys:
        for pattern in key.leak_patterns:
            assert pattern not in text, f"key material of {key.key_id!r} leaked"


# ------------------------------------------------------------------ servers


async def create_secrets(
    vault: VaultHandle, values: Mapping[str, str], concurrency: int = 16
) -> None:
    stub = secrets_admin(vault)
    gate = asyncio.Semaphore(concurrency)

    async def one(name: str, value: str) -> None:
        async with gate:
            await stub.CreateSecret(spb.CreateSecretRequest(name=name, value=value), timeout=10)

    await asyncio.gather(*(one(n, v) for n, v in values.items()))


def _request(names: Sequence[str]) -> rpb.ResolveTemplateRequest:
    return rpb.ResolveTemplateRequest(
        fields=[
            rpb.TemplateField(
                key=name, template=f"{{{{secret:{name}}}}}", encoding=rpb.ENCODING_RAW
            )
            for name in names
        ],
        tool="test-keys",
    )


async def resolve_many(stub: rgrpc.ResolverServiceStub, names: Sequence[str]) -> dict[str, str]:
    response = await stub.ResolveTemplate(_request(names), timeout=10)
    return {f.key: f.value for f in response.fields}


async def resolve(stub: rgrpc.ResolverServiceStub, name: str) -> str:
    return (await resolve_many(stub, [name]))[name]


async def resolve_all(vault: VaultHandle, expected: Mapping[str, str], chunk: int = 100) -> None:
    """Every secret resolves to exactly its expected value."""
    stub = resolver(vault)
    names = sorted(expected)
    for start in range(0, len(names), chunk):
        part = names[start : start + chunk]
        got = await resolve_many(stub, part)
        assert got == {n: expected[n] for n in part}


async def expect_unreadable(
    stub: rgrpc.ResolverServiceStub,
    names: Sequence[str],
    culprit: str,
    *,
    not_named: Iterable[str] = (),
    values: Iterable[str] = (),
) -> None:
    """Resolving ``names`` fails with DATA_LOSS / SECRET_UNREADABLE naming ``culprit`` only."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ResolveTemplate(_request(names), timeout=10)
    err = info.value
    assert err.code() == grpc.StatusCode.DATA_LOSS, (err.code(), err.details())
    info_ = error_info(err)
    assert info_.reason == "SECRET_UNREADABLE"
    details = str(err.details())
    assert culprit in details
    assert info_.metadata.get("names") == culprit
    everything = details + repr(dict(info_.metadata)) + repr(err.trailing_metadata())
    for other in not_named:
        assert other not in everything, f"error for {culprit} names {other}"
    for value in values:
        assert value not in everything, "a value leaked into an error"


# ------------------------------------------------------------------ database


CURRENT_SEALED = (
    "(SELECT s.id, s.name, v.version, v.kek_id, v.wrapped_dek, v.ciphertext "
    "FROM secrets s JOIN secret_versions v "
    "ON v.secret_id = s.id AND v.version = s.current_version) AS sealed"
)
"""SQL ``FROM`` item: each secret's current version, with its sealed columns."""


async def kek_counts(url: str) -> dict[str, int]:
    """Data keys per wrapping master key, over every retained version."""
    rows = await sql(
        url,
        "SELECT kek_id, count(*) AS n FROM secret_versions WHERE kek_id IS NOT NULL "
        "GROUP BY kek_id",
    )
    return {r["kek_id"]: int(r["n"]) for r in rows}


async def wrap_counts(url: str) -> dict[str, int]:
    rows = await sql(url, "SELECT key_id, wrap_count FROM master_keys")
    return {r["key_id"]: int(r["wrap_count"]) for r in rows}


async def db_fingerprint(url: str) -> dict[str, Any]:
    """Everything a write could change: every relation, every row of every table (hashed)
    and the per-table insert/update/delete counters (which also count rolled-back writes).

    Waits until no other session is connected, so exited sessions have flushed their stats.
    """
    conn = await asyncpg.connect(url, timeout=10)
    try:
        others = -1
        for _ in range(200):
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'"
            )
            if others == 0:
                break
            await asyncio.sleep(0.05)
        assert others == 0, "another session is still connected to the database"
        relations = [
            (r["nspname"], r["relname"], r["relkind"])
            for r in await conn.fetch(
                """SELECT n.nspname, c.relname, c.relkind::text AS relkind
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
                      AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
                    ORDER BY 1, 2"""
            )
        ]
        content: dict[str, tuple[int, str]] = {}
        for schema, name, kind in relations:
            if kind not in ("r", "p"):
                continue
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, md5(coalesce(string_agg(t::text, chr(10) "
                f'ORDER BY t::text), \'\')) AS h FROM "{schema}"."{name}" t'
            )
            assert row is not None
            content[f"{schema}.{name}"] = (int(row["n"]), str(row["h"]))
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        counters = {
            r["relname"]: (r["n_tup_ins"], r["n_tup_upd"], r["n_tup_del"])
            for r in await conn.fetch(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"
            )
        }
        master_keys = (
            [
                (r["key_id"], bytes(r["check_value"]).hex(), int(r["wrap_count"]))
                for r in await conn.fetch(
                    "SELECT key_id, check_value, wrap_count FROM master_keys ORDER BY key_id"
                )
            ]
            if ("public", "master_keys", "r") in relations
            else []
        )
        migrations = (
            [
                (r["version"], r["name"])
                for r in await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY 1")
            ]
            if ("public", "schema_migrations", "r") in relations
            else []
        )
    finally:
        await conn.close(timeout=5)
    return {
        "relations": relations,
        "content": content,
        "counters": counters,
        "master_keys": master_keys,
        "migrations": migrations,
    }
