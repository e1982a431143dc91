"""Usage off the hot rows (issue 9): audit batches only append to ``usage_pending``; folds
move it into the usage tables exactly once, even two at a time; the delete guard holds new
uses while it checks; pending uses of items gone are dropped; folds go in bounded batches;
a fold racing a delete or a purge leaves no usage of an item gone and does not deadlock
with it. Real servers over real channels on embedded Postgres (storage/usage.py has the
design)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from interakt.vault.v1 import config_service_pb2 as cpb
from interakt.vault.v1 import secret_service_pb2 as spb

from tests.support.resolve import RAW, put_configs, put_secrets, resolve
from tests.support.rpc import configs_admin, expect_error, resolver, secrets_admin
from tests.support.vault import LogCapture, VaultFactory, VaultHandle, create_database
from vaultsvc.config import DatabaseSettings
from vaultsvc.limits import MAX_USAGE_TOOLS
from vaultsvc.storage.db import Database
from vaultsvc.storage.embedded import EmbeddedPostgres
from vaultsvc.storage.usage import (
    FOLD_BATCH,
    FOLD_LOCK_ID,
    GUARD_LOCK_TIMEOUT_MS,
    fold_all,
    fold_batch,
)
from vaultsvc.vault.purge import Purger
from vaultsvc.vault.usage_fold import MAX_BATCHES_PER_ROUND, UsageFolder


@contextlib.asynccontextmanager
async def periodic_folds_paused(database_url: str) -> AsyncIterator[None]:
    """Hold the periodic fold's advisory lock: every process's round skips (reads still
    fold for themselves)."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", FOLD_LOCK_ID)
            yield
    finally:
        await conn.close()


async def pending(vault: VaultHandle) -> int:
    rows = await vault.sql("SELECT count(*) AS n FROM usage_pending")
    return int(rows[0]["n"])


async def get(vault: VaultHandle, name: str) -> spb.Secret:
    return await secrets_admin(vault).GetSecret(spb.GetSecretRequest(name=name))


async def test_audit_batches_only_append_and_reads_fold(vault: VaultHandle) -> None:
    await put_secrets(vault, {"orders_key": "O"})
    await put_configs(vault, {"region": "eu"})
    fields = [("f", "{{secret:orders_key}}/{{config:region}}", RAW)]
    async with periodic_folds_paused(vault.database_url):
        for _ in range(5):
            await resolve(resolver(vault), fields, tool="payments")
        await resolve(resolver(vault), fields, tool="")
        # The batches touched no usage row: all their usage is pending.
        assert await vault.sql("SELECT * FROM secret_usage") == []
        assert await vault.sql("SELECT * FROM config_usage") == []
        rows = await vault.sql(
            "SELECT tool, sum(uses) AS n FROM usage_pending WHERE secret_id IS NOT NULL "
            "GROUP BY tool ORDER BY tool"
        )
        assert [(r["tool"], r["n"]) for r in rows] == [("", 1), ("payments", 5)]
        # A read folds first, so it is exact while the periodic fold is not running.
        usage = (await get(vault, "orders_key")).usage
        assert usage.resolve_count == 6
        assert [(t.tool, t.resolve_count) for t in usage.tools] == [("payments", 5)]
        config = await configs_admin(vault).GetConfigValue(cpb.GetConfigValueRequest(key="region"))
        assert config.usage.resolve_count == 6
        assert await pending(vault) == 0
        await resolve(resolver(vault), fields, tool="payments")
        listed = await configs_admin(vault).ListConfigValues(cpb.ListConfigValuesRequest())
        assert listed.config_values[0].usage.resolve_count == 7
    # The periodic fold takes what is left (here: nothing) and keeps taking new uses.
    await resolve(resolver(vault), fields, tool="payments")
    for _ in range(100):  # 10 s at most
        if not await pending(vault):
            break
        await asyncio.sleep(0.1)
    assert await pending(vault) == 0
    rows = await vault.sql("SELECT resolve_count FROM secret_usage")
    assert [r["resolve_count"] for r in rows] == [8]


async def test_two_concurrent_folds_count_every_use_exactly_once(
    make_vault: VaultFactory,
) -> None:
    """Two replicas resolving at once while two folds (tiny batches, tight loops, one per
    replica's pool) and the periodic ones race for the same pending rows: every OK resolve
    is counted once per item and tool, none twice."""
    first = await make_vault()
    second = await make_vault(
        database_url=first.database_url, master_keys=first.master_keys, tokens=first.tokens
    )
    await put_secrets(first, {"s1": "1", "s2": "2"})
    await put_configs(first, {"c": "x"})
    fields = [("f", "{{secret:s1}}{{secret:s2}}{{config:c}}", RAW)]
    ok: Counter[str] = Counter()
    stop = asyncio.Event()
    folded = [0, 0]

    async def client(vault: VaultHandle, n: int, worker: int) -> None:
        stub = resolver(vault)
        for i in range(n):
            tool = f"tool-{(i + worker) % 4}" if i % 5 else ""
            await resolve(stub, fields, tool=tool)
            ok[tool] += 1

    async def folding(db: Database, index: int) -> None:
        while not stop.is_set():
            n = await fold_batch(db, limit=3)
            assert n is not None
            folded[index] += n
            if n == 0:
                await asyncio.sleep(0.001)

    folds = [
        asyncio.create_task(folding(first.runtime.db, 0)),
        asyncio.create_task(folding(second.runtime.db, 1)),
    ]
    try:
        await asyncio.gather(
            *(client(first, 25, w) for w in range(6)), *(client(second, 25, w) for w in range(6))
        )
    finally:
        stop.set()
        await asyncio.gather(*folds)
    # Both test folds took rows (they raced for them), and the reads below fold the rest.
    assert folded[0] > 0 and folded[1] > 0, folded
    total = sum(ok.values())
    assert total == 300
    named = {tool: n for tool, n in ok.items() if tool}
    for name in ("s1", "s2"):
        usage = (await get(second, name)).usage
        assert usage.resolve_count == total
        assert {t.tool: t.resolve_count for t in usage.tools} == named
    config = await configs_admin(first).GetConfigValue(cpb.GetConfigValueRequest(key="c"))
    assert config.usage.resolve_count == total
    assert {t.tool: t.resolve_count for t in config.usage.tools} == named
    assert await pending(first) == 0
    events = await first.sql(
        "SELECT count(*) AS n FROM audit_events WHERE outcome = 'OK' "
        "AND method LIKE '%/ResolveTemplate'"
    )
    assert events[0]["n"] == total


async def test_guard_holds_uses_committing_during_the_delete(vault: VaultHandle) -> None:
    """Resolves of a never-used secret start while its guarded delete is between its check
    and its commit (a test trigger makes that window 0.6 s long). Their uses must not commit
    inside the window: the delete, which saw no use, would then miss uses committed before
    it. A guard that only reads usage (no lock) lets them commit there and fails this."""
    await put_secrets(vault, {"racy": "RACY-V"})
    for statement in (
        "CREATE TABLE test_pending_log (secret_id uuid, at timestamptz)",
        """CREATE FUNCTION test_log_pending() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO test_pending_log VALUES (NEW.secret_id, clock_timestamp());
                 RETURN NULL; END $$""",
        """CREATE TRIGGER test_log_pending AFTER INSERT ON usage_pending
           FOR EACH ROW EXECUTE FUNCTION test_log_pending()""",
        "CREATE TABLE test_delete_done (at timestamptz)",
        """CREATE FUNCTION test_slow_delete() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF NEW.delete_time IS NOT NULL AND OLD.delete_time IS NULL THEN
               PERFORM pg_sleep(0.6);
               INSERT INTO test_delete_done VALUES (clock_timestamp());
             END IF;
             RETURN NEW;
           END $$""",
        """CREATE TRIGGER test_slow_delete BEFORE UPDATE ON secrets
           FOR EACH ROW EXECUTE FUNCTION test_slow_delete()""",
    ):
        await vault.sql(statement)
    admin = secrets_admin(vault)

    async def delete_racy() -> None:
        await admin.DeleteSecret(spb.DeleteSecretRequest(name="racy"))

    delete = asyncio.create_task(delete_racy())
    deadline = time.monotonic() + 10
    while not await vault.sql(
        "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
        "AND datname = current_database()"
    ):
        assert time.monotonic() < deadline and not delete.done()
        await asyncio.sleep(0.01)
    stub = resolver(vault)
    results = await asyncio.gather(
        *(resolve(stub, [("f", "{{secret:racy}}", RAW)], tool="racer") for _ in range(8)),
        return_exceptions=True,
    )
    await delete  # no use committed before it: not in use
    answered = [r for r in results if not isinstance(r, BaseException)]
    assert answered, results  # the resolves read the secret while it was live
    assert all(r == [("f", "RACY-V")] for r in answered)
    done = await vault.sql("SELECT at FROM test_delete_done")
    logged = await vault.sql("SELECT at FROM test_pending_log")
    assert len(done) == 1 and logged
    # Every use was appended after the delete's window, i.e. after it committed.
    assert all(row["at"] > done[0]["at"] for row in logged), (done, logged)


async def test_pending_uses_of_items_gone_are_dropped(make_vault: VaultFactory) -> None:
    """A batch that commits after its secret was purged (the resolve read it before) leaves
    pending rows the fold drops; a deleted config value takes its pending rows along, so a
    value recreated under the same key starts afresh."""
    vault = await make_vault(delete_guard_days=0)  # deletes fold nothing themselves
    await put_secrets(vault, {"gone": "G", "kept": "K"})
    await put_configs(vault, {"host": "h"})
    gone_id = (await vault.sql("SELECT id FROM secrets WHERE name = 'gone'"))[0]["id"]
    async with periodic_folds_paused(vault.database_url):
        await resolve(resolver(vault), [("f", "{{secret:gone}}{{config:host}}", RAW)], tool="t")
        await secrets_admin(vault).DeleteSecret(spb.DeleteSecretRequest(name="gone", purge=True))
        # As a batch would write it, committing after the purge.
        await vault.sql(
            "INSERT INTO usage_pending (secret_id, tool, uses, last_time) "
            "VALUES ($1, 'late', 3, now())",
            gone_id,
        )
        host = await vault.sql("SELECT uses FROM usage_pending WHERE key_lower = 'host'")
        assert [r["uses"] for r in host] == [1]  # pending, not folded
        await configs_admin(vault).DeleteConfigValue(cpb.DeleteConfigValueRequest(key="host"))
        assert await vault.sql("SELECT * FROM usage_pending WHERE key_lower IS NOT NULL") == []
        assert await pending(vault) == 2  # the purged secret's rows, pending
        assert (await get(vault, "kept")).usage.resolve_count == 0  # folds every row
        assert await pending(vault) == 0
        assert await vault.sql("SELECT * FROM secret_usage WHERE secret_id = $1", gone_id) == []
        assert await vault.sql("SELECT * FROM secret_tool_usage") == []
        await put_configs(vault, {"host": "h2"})
        fresh = await configs_admin(vault).GetConfigValue(cpb.GetConfigValueRequest(key="host"))
        assert fresh.usage.resolve_count == 0 and not fresh.usage.tools


async def test_folds_go_in_bounded_batches_and_a_backlog_is_logged(
    make_vault: VaultFactory, log_capture: LogCapture
) -> None:
    """A backlog (the periodic fold stopped) is folded a bounded batch per transaction and
    a bounded number of batches per round, and logged; a process that finds another one
    folding skips its round."""
    logged_from = log_capture.mark()  # the log is the session's: only this test's lines
    vault = await make_vault()
    await put_secrets(vault, {"s": "S"})
    url = vault.database_url
    async with periodic_folds_paused(url):
        stub = resolver(vault)
        for i in range(25):  # one pending row per (secret, tool)
            await resolve(stub, [("f", "{{secret:s}}", RAW)], tool=f"tool-{i:02d}")
        await vault.close()  # no periodic fold from here on
        assert await pending(vault) == 25
    db = await Database.connect(url, DatabaseSettings(url=url))
    try:
        assert await fold_batch(db, limit=3) == 3
        assert await pending(vault) == 22
        folder = UsageFolder(db, batch_size=1)
        async with periodic_folds_paused(url):
            assert await folder.run_once() is None  # another process holds the lock
        assert await pending(vault) == 22
        # At most MAX_BATCHES_PER_ROUND batches of one row: the round stops with 2 left.
        assert MAX_BATCHES_PER_ROUND == 20
        assert await folder.run_once() == 20
        assert await pending(vault) == 2
        logged = [r for r in log_capture.records(logged_from) if r["logger"] == "vaultsvc.usage"]
        backlog = [e for e in logged if e["msg"] == "usage fold: folded a backlog of pending usage"]
        assert [(e["level"], e["count"], e["more_left"]) for e in backlog] == [
            ("WARNING", 20, True)
        ], logged
        # A read's fold is bounded too: at most `rounds` batches, the rest left pending.
        assert await fold_all(db, limit=1, rounds=1) == 1
        assert await pending(vault) == 1
        assert await folder.run_once() == 1
        assert await folder.run_once() == 0
        rows = await vault.sql("SELECT resolve_count FROM secret_usage")
        assert [r["resolve_count"] for r in rows] == [25]
        tools = await vault.sql("SELECT tool FROM secret_tool_usage ORDER BY tool")
        # Pruned to the 20 most recent, across batches.
        assert [r["tool"] for r in tools] == [f"tool-{i:02d}" for i in range(5, 25)]
    finally:
        await db.close()


async def test_fold_and_guard_behind_a_transaction_pooler(
    pg: EmbeddedPostgres, make_vault: VaultFactory
) -> None:
    """``database.pooler = transaction``: the fold, the reads that fold and the guard's lock
    all live in transactions; nothing (advisory lock, lock_timeout) stays on a connection
    a pooler would hand to another client."""
    url = await create_database(pg)
    pooled = DatabaseSettings(
        url=url, pooler="transaction", statement_timeout_ms=5000, pool_min_size=1, pool_max_size=1
    )
    vault = await make_vault(database_url=url, database=pooled)
    await put_secrets(vault, {"k": "K", "idle": "I"})
    await resolve(resolver(vault), [("f", "{{secret:k}}", RAW)], tool="pooled")
    assert (await get(vault, "k")).usage.resolve_count == 1
    await expect_error(
        secrets_admin(vault).DeleteSecret(spb.DeleteSecretRequest(name="k")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SECRET_IN_USE",
    )
    await secrets_admin(vault).DeleteSecret(spb.DeleteSecretRequest(name="idle"))
    assert await UsageFolder(vault.runtime.db).run_once() in (0, None)
    async with vault.runtime.db.pool.acquire() as raw:  # the one pool connection, idle
        assert not raw.is_in_transaction()
        assert await raw.fetchval("SHOW lock_timeout") == "0"
        held = await raw.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert held == 0


async def test_guard_waits_a_bounded_time_for_a_batch_in_flight(vault: VaultHandle) -> None:
    """An audit batch that does not commit (here: a transaction holding an uncommitted
    pending row) makes a guarded delete wait at most GUARD_LOCK_TIMEOUT_MS, then fail
    UNAVAILABLE (retryable) with nothing deleted; once it commits, its use is seen."""
    await put_secrets(vault, {"k": "K"})
    secret_id = (await vault.sql("SELECT id FROM secrets WHERE name = 'k'"))[0]["id"]
    admin = secrets_admin(vault)
    conn = await asyncpg.connect(vault.database_url)
    try:
        batch = conn.transaction()
        await batch.start()
        await conn.execute(
            "INSERT INTO usage_pending (secret_id, tool, uses, last_time) "
            "VALUES ($1, 'slow', 1, now())",
            secret_id,
        )
        started = time.monotonic()
        await expect_error(
            admin.DeleteSecret(spb.DeleteSecretRequest(name="k")),
            grpc.StatusCode.UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
        )
        waited = time.monotonic() - started
        assert GUARD_LOCK_TIMEOUT_MS / 1000 <= waited < GUARD_LOCK_TIMEOUT_MS / 1000 + 2, waited
        assert (await get(vault, "k")).name == "k"
        await batch.commit()
    finally:
        await conn.close()
    _, info = await expect_error(
        admin.DeleteSecret(spb.DeleteSecretRequest(name="k")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SECRET_IN_USE",
    )
    assert info.metadata["tools"] == "slow"


# ------------------------------------------------- a fold racing a delete or a purge
#
# A fold racing a delete or a purge of the items it folds (V13__usage_races.sql): no usage
# row outlives its item, and neither side sees a deadlock.
#
# Each interleaving is forced on embedded Postgres with plain lock gates: a connection that
# holds one row (or table) the fold (or the delete) needs next, so the other side runs in
# that exact window; progress is read from ``pg_blocking_pids``, never slept on. The fold is
# the statement every fold runs (``SELECT vault_fold_usage(...)``) on a connection of the
# test's own, so the test knows which backend it is.

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


async def hold_audit_events(gate: asyncpg.Connection) -> tuple[Any, int]:
    """Lock ``audit_events`` on ``gate`` (SHARE, in a transaction the caller commits):
    every audit write (a batch, a delete's own event) waits there. The transaction and
    the gate's backend pid."""
    transaction = gate.transaction()
    await transaction.start()
    await gate.execute("LOCK TABLE audit_events IN SHARE MODE")
    return transaction, gate.get_server_pid()


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
    except Exception as exc:  # the test asserts what it was
        return exc


def later(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


async def ids(vault: VaultHandle, *names: str) -> dict[str, uuid.UUID]:
    rows = await vault.sql("SELECT name, id FROM secrets WHERE name = ANY ($1::text[])", names)
    return {r["name"]: r["id"] for r in rows}


async def fold_gated_then_purge(
    vault: VaultHandle,
    gate: asyncpg.Connection,
    folding: asyncpg.Connection,
    observer: asyncpg.Connection,
    gated_secret: uuid.UUID,
) -> tuple[asyncio.Task[Any], asyncio.Task[Any], Purger]:
    """In ``gate``'s open transaction, hold ``gated_secret``'s usage row; start a fold on
    ``folding`` and wait until it waits on the gate; then start a purge (8 days on) and
    wait until it waits on the fold. Returns the fold, the purge and the purger."""
    await gate.execute("SELECT 1 FROM secret_usage WHERE secret_id = $1 FOR UPDATE", gated_secret)
    gate_pid, fold_pid = gate.get_server_pid(), folding.get_server_pid()
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
    return fold, purge, purger


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
    (doomed, _), (kept, kept_id) = by_id  # the fold upserts doomed, then kept
    url = vault.database_url
    async with (
        periodic_folds_paused(url),
        connection(url) as gate,
        connection(url) as folding,
        connection(url) as observer,
    ):
        await resolve(resolver(vault), [("f", f"{{{{secret:{kept}}}}}", RAW)], tool="t")
        await folding.fetchval(FOLD_SQL, FOLD_BATCH, MAX_USAGE_TOOLS)  # kept has a row
        fields = [("f", f"{{{{secret:{doomed}}}}}{{{{secret:{kept}}}}}", RAW)]
        await resolve(resolver(vault), fields, tool="t")
        await secrets_admin(vault).DeleteSecret(spb.DeleteSecretRequest(name=doomed))
        async with gate.transaction():
            fold, purge, purger = await fold_gated_then_purge(
                vault, gate, folding, observer, kept_id
            )
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


async def test_a_purge_and_a_fold_do_not_deadlock(make_vault: VaultFactory) -> None:
    """The fold upserts usage rows in id order (a < c < b); the purge of a and b deleted
    their usage rows in its own order (b, then a: here the order of both tables and of
    purge_time). With the fold holding a's row and waiting on c (the gate), the purge
    deletes b's row and waits on a's; the gate lets go, the fold waits on b's: before V13 a
    deadlock, and the purge (the first to wait) was aborted. Now the fold holds the items
    first and the purge skips items a fold holds, so neither waits on the other."""
    vault = await make_vault(delete_guard_days=0)
    await put_secrets(vault, {"x1": "1", "x2": "2", "x3": "3"})
    (a, _), (c, c_id), (b, _) = sorted(
        (await ids(vault, "x1", "x2", "x3")).items(), key=lambda kv: kv[1]
    )
    url = vault.database_url
    fields = [("f", f"{{{{secret:{a}}}}}{{{{secret:{b}}}}}{{{{secret:{c}}}}}", RAW)]
    async with (
        periodic_folds_paused(url),
        connection(url) as gate,
        connection(url) as folding,
        connection(url) as observer,
    ):
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
        gate_tx = gate.transaction()
        await gate_tx.start()
        fold, purge, purger = await fold_gated_then_purge(vault, gate, folding, observer, c_id)
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
    async with (
        periodic_folds_paused(url),
        connection(url) as gate,
        connection(url) as folding,
        connection(url) as observer,
    ):
        gate_tx, gate_pid = await hold_audit_events(gate)

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


@pytest.mark.parametrize(
    ("guard_days", "force"), [(0, False), (7, True)], ids=["unguarded", "forced"]
)
async def test_a_use_of_a_deleted_config_value_committed_after_its_delete_is_not_inherited(
    make_vault: VaultFactory, guard_days: int, force: bool
) -> None:
    """A resolve read a config value; its audit batch commits after an unguarded (or
    forced) delete of the value ran its cleanup, so its pending row outlives the delete.
    The key is created again before that row is folded. Before V14 the fold counted the
    old value's use for the new one (it looked used, and its guard refused a plain
    delete); now every pending row of a config value names the value's generation (its
    create_time) and the fold drops uses of a generation that is gone."""
    vault = await make_vault(delete_guard_days=guard_days)
    await put_configs(vault, {"host": "h"})
    url = vault.database_url
    fields = [("f", "x-{{config:host}}", RAW)]
    async with (
        periodic_folds_paused(url),
        connection(url) as gate,
        connection(url) as observer,
    ):
        gate_tx, gate_pid = await hold_audit_events(gate)
        # The resolve has read the value; its batch waits on the gate.
        old = asyncio.create_task(resolve(resolver(vault), fields, tool="old"))

        async def waiting() -> list[str]:
            """What the backends waiting on the gate run (the vault's own jobs may wait
            there too)."""
            rows = await observer.fetch(
                "SELECT query FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))",
                gate_pid,
            )
            return [r["query"] for r in rows]

        async def batch_waits() -> bool:
            return any("INSERT INTO usage_pending" in q for q in await waiting())

        async def delete_waits() -> bool:  # its audit event, alone in its statement
            return any(
                "INSERT INTO audit_events" in q and "usage_pending" not in q
                for q in await waiting()
            )

        await until(batch_waits, old)
        assert not old.done(), "the resolve's batch did not reach the gate"

        # The delete runs its cleanup (the value's pending rows: none committed yet), then
        # waits on the gate with its own audit event.
        async def delete_host() -> None:
            request = cpb.DeleteConfigValueRequest(key="host", force=force)
            await configs_admin(vault).DeleteConfigValue(request)

        delete = asyncio.create_task(delete_host())
        await until(delete_waits, delete)
        assert not delete.done(), "the delete did not reach its audit event"
        await gate_tx.commit()
        assert await outcome(old) == [("f", "x-h")]
        deleted = await outcome(delete)
        assert not isinstance(deleted, BaseException), deleted
        # The old value's use is pending, after the delete: created again, then folded.
        assert await pending(vault) == 1
        await put_configs(vault, {"host": "h2"})
    fresh = await configs_admin(vault).GetConfigValue(cpb.GetConfigValueRequest(key="host"))
    assert fresh.usage.resolve_count == 0 and not fresh.usage.tools
    assert await pending(vault) == 0
    # The new value's own uses count as ever.
    assert await resolve(resolver(vault), fields, tool="new") == [("f", "x-h2")]
    fresh = await configs_admin(vault).GetConfigValue(cpb.GetConfigValueRequest(key="host"))
    assert fresh.usage.resolve_count == 1
    assert [t.tool for t in fresh.usage.tools] == ["new"]
    await configs_admin(vault).DeleteConfigValue(
        cpb.DeleteConfigValueRequest(key="host", force=True)
    )
