"""A fold racing a delete or a purge of the items it folds (V13__usage_races.sql): no usage
row outlives its item, and neither side sees a deadlock.

Each interleaving is forced on embedded Postgres with plain lock gates: a connection that
holds one row (or table) the fold (or the delete) needs next, so the other side runs in
that exact window; progress is read from ``pg_blocking_pids``, never slept on. The fold is
the statement every fold runs (``SELECT vault_fold_usage(...)``) on a connection of the
test's own, so the test knows which backend it is."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import grpc
from interakt.vault.v1 import config_service_pb2 as cpb
from interakt.vault.v1 import secret_service_pb2 as spb

from tests.integration.test_usage_fold import get, periodic_folds_paused
from tests.support.resolve import RAW, put_configs, put_secrets, resolve
from tests.support.rpc import configs_admin, expect_error, resolver, secrets_admin
from tests.support.vault import VaultFactory, VaultHandle
from vaultsvc.limits import MAX_USAGE_TOOLS
from vaultsvc.storage.usage import FOLD_BATCH
from vaultsvc.vault.purge import Purger

T = TypeVar("T")

FOLD_SQL = "SELECT vault_fold_usage($1, $2)"
STRAY_SECRET_USAGE = (
    "SELECT secret_id FROM secret_usage WHERE secret_id NOT IN (SELECT id FROM secrets) "
    "UNION ALL SELECT secret_id FROM secret_tool_usage "
    "WHERE secret_id NOT IN (SELECT id FROM secrets)"
)


@contextlib.asynccontextmanager
async def connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def blocked_by(observer: asyncpg.Connection, pid: int) -> list[int]:
    """The backends waiting on a lock ``pid`` holds."""
    rows = await observer.fetch(
        "SELECT pid FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))", pid
    )
    return [r["pid"] for r in rows]


async def blockers(observer: asyncpg.Connection, pid: int) -> list[int]:
    """The backends holding a lock ``pid`` waits for."""
    return list(await observer.fetchval("SELECT pg_blocking_pids($1)", pid))


async def until(condition: Any, task: asyncio.Task[Any] | None = None) -> None:
    """Poll ``condition()`` (a coroutine function) until true, or ``task`` ended (10 s)."""
    deadline = time.monotonic() + 10
    while not await condition():
        if task is not None and task.done():
            return
        assert time.monotonic() < deadline, "the interleaving was not reached"
        await asyncio.sleep(0.005)


async def outcome(awaitable: Awaitable[T]) -> T | BaseException:
    try:
        return await asyncio.wait_for(awaitable, 30)
    except Exception as exc:  # noqa: BLE001 - the test asserts what it was
        return exc


def later(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


async def ids(vault: VaultHandle, *names: str) -> dict[str, uuid.UUID]:
    rows = await vault.sql("SELECT name, id FROM secrets WHERE name = ANY ($1::text[])", names)
    return {r["name"]: r["id"] for r in rows}


async def test_a_purge_racing_a_fold_leaves_no_usage_row_of_the_purged_secret(
    make_vault: VaultFactory,
) -> None:
    """The fold has taken the pending rows of a never-folded secret and inserted its usage
    row (not committed: it waits on a row the gate holds) when the purge deletes the
    secret. The purge's trigger cannot see that uncommitted row, so before V13 it
    committed after the purge: a usage row of a secret that no longer exists. Now the fold
    holds the secret (FOR KEY SHARE) first: the purge skips it this round and purges it
    once the fold committed, taking its usage along."""
    vault = await make_vault(delete_guard_days=0)  # the deletes fold nothing themselves
    await put_secrets(vault, {"s1": "1", "s2": "2"})
    by_id = sorted((await ids(vault, "s1", "s2")).items(), key=lambda kv: kv[1])
    (doomed, doomed_id), (kept, kept_id) = by_id  # the fold upserts doomed, then kept
    url = vault.database_url
    async with periodic_folds_paused(url), connection(url) as gate, connection(
        url
    ) as folding, connection(url) as observer:
        await resolve(resolver(vault), [("f", f"{{{{secret:{kept}}}}}", RAW)], tool="t")
        await folding.fetchval(FOLD_SQL, FOLD_BATCH, MAX_USAGE_TOOLS)  # kept has a row
        fields = [("f", f"{{{{secret:{doomed}}}}}{{{{secret:{kept}}}}}", RAW)]
        await resolve(resolver(vault), fields, tool="t")
        await secrets_admin(vault).DeleteSecret(spb.DeleteSecretRequest(name=doomed))
        fold_pid = folding.get_server_pid()
        async with gate.transaction():
            await gate.execute("SELECT 1 FROM secret_usage WHERE secret_id = $1 FOR UPDATE", kept_id)
            fold = asyncio.create_task(folding.fetchval(FOLD_SQL, FOLD_BATCH, MAX_USAGE_TOOLS))
            gate_pid = gate.get_server_pid()

            async def fold_waits_on_the_gate() -> bool:
                return gate_pid in await blockers(observer, fold_pid)

            await until(fold_waits_on_the_gate, fold)
            assert not fold.done(), "the fold did not reach the gated row"
            purger = Purger(vault.runtime.vault, interval=3600, clock=lambda: later(8))
            purge = asyncio.create_task(purger.purge_expired())

            async def purge_waits_on_the_fold() -> bool:
                return bool(await blocked_by(observer, fold_pid))

            await until(purge_waits_on_the_fold, purge)
        first = await outcome(purge)
        assert await outcome(fold) == 2  # the two pending rows
        assert not isinstance(first, BaseException), first
        second = await outcome(purger.purge_expired())
        assert not isinstance(second, BaseException), second
    assert first + second == [doomed]
    assert await ids(vault, doomed) == {}
    assert await vault.sql(STRAY_SECRET_USAGE) == []
    usage = (await get(vault, kept)).usage
    assert usage.resolve_count == 2
    assert [(t.tool, t.resolve_count) for t in usage.tools] == [("t", 2)]
    assert doomed_id != kept_id


async def test_a_purge_and_a_fold_do_not_deadlock(make_vault: VaultFactory) -> None:
    """The fold upserts usage rows in id order (a < c < b); the purge of a and b deleted
    their usage rows in its own order (b, then a: here the order of both tables and of
    purge_time). With the fold holding a's row and waiting on c (the gate), the purge
    deletes b's row and waits on a's; the gate lets go, the fold waits on b's: before V13 a
    deadlock, and the purge (the first to wait) was aborted. Now the fold holds the items
    first and the purge skips items a fold holds, so neither waits on the other."""
    vault = await make_vault(delete_guard_days=0)
    await put_secrets(vault, {"x1": "1", "x2": "2", "x3": "3"})
    (a, a_id), (c, c_id), (b, b_id) = sorted(
        (await ids(vault, "x1", "x2", "x3")).items(), key=lambda kv: kv[1]
    )
    url = vault.database_url
    fields = [("f", f"{{{{secret:{a}}}}}{{{{secret:{b}}}}}{{{{secret:{c}}}}}", RAW)]
    async with periodic_folds_paused(url), connection(url) as gate, connection(
        url
    ) as folding, connection(url) as observer:
        await resolve(resolver(vault), fields, tool="t")
        await folding.fetchval(FOLD_SQL, FOLD_BATCH, MAX_USAGE_TOOLS)  # every item has a row
        await resolve(resolver(vault), fields, tool="t")  # pending again
        for name in (b, a):  # b's purge time comes first
            await secrets_admin(vault).DeleteSecret(spb.DeleteSecretRequest(name=name))
        # b before a in both heaps, whatever plan the purge's trigger uses.
        for table, column in (("secrets", "id"), ("secret_usage", "secret_id")):
            await vault.sql(f"CREATE INDEX test_desc ON {table} ({column} DESC)")
            await vault.sql(f"CLUSTER {table} USING test_desc")
            await vault.sql("DROP INDEX test_desc")
        fold_pid = folding.get_server_pid()
        gate_tx = gate.transaction()
        await gate_tx.start()
        await gate.execute("SELECT 1 FROM secret_usage WHERE secret_id = $1 FOR UPDATE", c_id)
        gate_pid = gate.get_server_pid()
        fold = asyncio.create_task(folding.fetchval(FOLD_SQL, FOLD_BATCH, MAX_USAGE_TOOLS))

        async def fold_waits_on_the_gate() -> bool:
            return gate_pid in await blockers(observer, fold_pid)

        await until(fold_waits_on_the_gate, fold)
        assert not fold.done(), "the fold did not reach the gated row"
        purger = Purger(vault.runtime.vault, interval=3600, clock=lambda: later(8))
        purge = asyncio.create_task(purger.purge_expired())

        async def purge_waits_on_the_fold() -> bool:
            return bool(await blocked_by(observer, fold_pid))

        await until(purge_waits_on_the_fold, purge)
        await gate_tx.commit()  # the fold goes on to c, then b
        first = await outcome(purge)
        folded = await outcome(fold)
        assert not isinstance(first, BaseException), f"the purge failed: {first!r}"
        assert folded == 3, f"the fold failed: {folded!r}"
        second = await outcome(purger.purge_expired())
        assert not isinstance(second, BaseException), second
    assert sorted(first + second) == sorted([a, b])
    assert set(await ids(vault, a, b, c)) == {c}
    assert await vault.sql(STRAY_SECRET_USAGE) == []
    assert (await get(vault, c)).usage.resolve_count == 2
    assert len({a_id, b_id, c_id}) == 3


async def test_a_config_value_deleted_while_a_fold_runs_leaves_no_uses_to_its_successor(
    make_vault: VaultFactory,
) -> None:
    """An unguarded delete of a config value has run its trigger (the value's pending
    rows deleted) and waits (the gate on audit_events) before committing; a batch then
    commits a use of it (the resolve read it before), and a fold takes that row while
    the value is still visible. Before V13 the fold inserted a usage row of the value and
    committed before the delete did, so the row outlived it: a value recreated under the
    key inherited the uses, and its delete guard refused to delete it. Now the fold locks
    the value first: it waits for the delete, then finds the value gone and drops the
    row."""
    vault = await make_vault(delete_guard_days=0)
    guarded = await make_vault(
        database_url=vault.database_url, master_keys=vault.master_keys, tokens=vault.tokens
    )  # a replica with the guard on (delete_guard_days 7)
    await put_configs(vault, {"host": "h"})
    url = vault.database_url
    async with periodic_folds_paused(url), connection(url) as gate, connection(
        url
    ) as folding, connection(url) as observer:
        gate_tx = gate.transaction()
        await gate_tx.start()
        await gate.execute("LOCK TABLE audit_events IN SHARE MODE")
        gate_pid = gate.get_server_pid()

        async def delete_host() -> None:
            await configs_admin(vault).DeleteConfigValue(cpb.DeleteConfigValueRequest(key="host"))

        delete = asyncio.create_task(delete_host())

        async def delete_waits_on_the_gate() -> bool:
            return bool(await blocked_by(observer, gate_pid))

        await until(delete_waits_on_the_gate, delete)
        assert not delete.done(), "the delete did not reach its audit event"
        (delete_pid,) = await blocked_by(observer, gate_pid)
        # As a group commit writes it (the audit part is held by the gate here).
        await observer.execute(
            "INSERT INTO usage_pending (key_lower, tool, uses, last_time) "
            "VALUES ('host', 'late', 3, now())"
        )
        fold = asyncio.create_task(folding.fetchval(FOLD_SQL, FOLD_BATCH, MAX_USAGE_TOOLS))
        fold_pid = folding.get_server_pid()

        async def fold_waits_on_the_delete() -> bool:
            return delete_pid in await blockers(observer, fold_pid)

        await until(fold_waits_on_the_delete, fold)
        await gate_tx.commit()
        deleted = await outcome(delete)
        assert not isinstance(deleted, BaseException), deleted
        assert await outcome(fold) == 1
    assert await vault.sql("SELECT * FROM config_usage") == []
    assert await vault.sql("SELECT * FROM config_tool_usage") == []
    await put_configs(vault, {"host": "h2"})
    fresh = await configs_admin(vault).GetConfigValue(cpb.GetConfigValueRequest(key="host"))
    assert fresh.usage.resolve_count == 0 and not fresh.usage.tools
    await configs_admin(guarded).DeleteConfigValue(cpb.DeleteConfigValueRequest(key="host"))
    await expect_error(
        configs_admin(vault).GetConfigValue(cpb.GetConfigValueRequest(key="host")),
        grpc.StatusCode.NOT_FOUND,
        "CONFIG_NOT_FOUND",
    )
