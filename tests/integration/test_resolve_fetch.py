"""A resolve's cache misses against REAL Postgres and a REAL server: the rows come from one
statement whose generic plan is kept (not planned again on every call), and concurrent
misses share one query (the fetch batcher) without weakening coherence, error mapping or
deadlines."""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import grpc
import pytest
from interakt.vault.v1 import config_service_pb2 as cpb
from interakt.vault.v1 import secret_service_pb2 as spb

from tests.support.resolve import RAW, request, resolve
from tests.support.rpc import configs_admin, error_info, resolver, secrets_admin
from tests.support.vault import VaultFactory, VaultHandle, create_database
from vaultsvc.config import DatabaseSettings
from vaultsvc.errors import Reason, VaultError
from vaultsvc.storage.db import Database
from vaultsvc.storage.embedded import EmbeddedPostgres
from vaultsvc.storage.repository import RESOLVE_ROWS_SQL, Repository
from vaultsvc.vault.fetcher import RowFetcher


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


# ---------------------------------------------------------------- the fetch batcher


async def _stocked(vault: VaultHandle, count: int) -> list[str]:
    names = [f"k{i}" for i in range(count)]
    admin = secrets_admin(vault)
    for name in names:
        await admin.CreateSecret(spb.CreateSecretRequest(name=name, value=f"value-{name}"))
    await configs_admin(vault).PutConfigValue(cpb.PutConfigValueRequest(key="region", value="eu-1"))
    await vault.caught_up()
    return names


def _fetcher(vault: VaultHandle) -> RowFetcher:
    return vault.runtime.vault.fetcher


async def test_concurrent_misses_share_one_query_and_each_caller_gets_its_own_rows(
    vault: VaultHandle,
) -> None:
    names = await _stocked(vault, 8)
    fetcher, cache = _fetcher(vault), vault.runtime.vault.cache
    asks = [
        (["k0", "k1"], ["region"]),
        (["k1", "k2", "ghost"], []),
        (["k3"], ["nope"]),
        ([], ["region"]),
        (["k4", "k5", "k6", "k7"], []),
    ]
    before = fetcher.queries
    results = await asyncio.gather(*(fetcher.fetch(s, c) for s, c in asks))
    assert fetcher.queries == before + 1  # one batch, one statement
    for (wanted, wanted_configs), (rows, configs) in zip(asks, results, strict=True):
        assert sorted(rows) == sorted(n for n in wanted if n in names)
        assert all(rows[n].name == n for n in rows)
        assert {k: c.value for k, c in configs.items()} == (
            {"region": "eu-1"} if "region" in wanted_configs else {}
        )
    # Stored for the next resolves, the missing ones negatively.
    assert cache.peek("s", "k5") is not None and cache.is_negative("s", "ghost")
    assert cache.is_negative("c", "nope") and cache.peek("c", "region").value == "eu-1"

    # The same through real RPCs: every concurrent resolve renders its own values.
    stub = resolver(vault)
    templates = [f"{{{{secret:{a}}}}}+{{{{secret:{b}}}}}" for a, b in itertools.pairwise(names)]
    for entry in names:
        cache.invalidate("s", entry)
    replies = await asyncio.gather(*(resolve(stub, [("f", t, RAW)]) for t in templates * 3))
    for template, reply in zip(templates * 3, replies, strict=True):
        a, b = (part.strip("{}").split(":")[1] for part in template.split("+"))
        assert reply == [("f", f"value-{a}+value-{b}")]


async def test_a_change_racing_a_batched_fetch_is_served_once_and_not_stored(
    vault: VaultHandle,
) -> None:
    await _stocked(vault, 2)
    fetcher, cache = _fetcher(vault), vault.runtime.vault.cache
    read_done, release = asyncio.Event(), asyncio.Event()

    async def pause_between_read_and_store() -> None:
        read_done.set()
        await release.wait()

    cache.before_store = pause_between_read_and_store
    try:
        both = asyncio.gather(fetcher.fetch(["k0"], []), fetcher.fetch(["k1"], ["region"]))
        await asyncio.wait_for(read_done.wait(), 10)  # the batch has read k0, k1, region
        before = fetcher.queries
        admin = secrets_admin(vault)
        await admin.UpdateSecret(spb.UpdateSecretRequest(name="k0", value="changed"))
        await configs_admin(vault).PutConfigValue(
            cpb.PutConfigValueRequest(key="region", value="us-2")
        )
        await vault.caught_up()  # the notifications arrived before the batch stores
        release.set()
        (first, _), (second, configs) = await asyncio.wait_for(both, 10)
    finally:
        cache.before_store = None
    assert fetcher.queries == before  # both callers were in the one batch
    assert first["k0"].value_version == 1 and second["k1"].value_version == 1
    assert {k: c.value for k, c in configs.items()} == {"region": "eu-1"}  # served once, as read
    assert cache.peek("s", "k0") is None and cache.peek("c", "region") is None  # not kept
    assert cache.peek("s", "k1") is not None  # unchanged: kept
    assert await resolve(resolver(vault), [("f", "{{secret:k0}} {{config:region}}", RAW)]) == [
        ("f", "changed us-2")
    ]


async def test_a_failed_batch_fails_every_caller_with_the_mapped_reason(
    private_pg: EmbeddedPostgres, make_vault: VaultFactory
) -> None:
    vault = await make_vault(database_url=await create_database(private_pg))
    await _stocked(vault, 3)
    fetcher = _fetcher(vault)
    await asyncio.to_thread(private_pg.stop_server)
    try:
        before = fetcher.queries
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(fetcher.fetch([f"k{i}"], []) for i in range(3)),
                fetcher.fetch([], ["region"]),
                return_exceptions=True,
            ),
            30,
        )
        assert fetcher.queries == before + 1
        for outcome in outcomes:
            assert isinstance(outcome, VaultError), outcome
            assert outcome.reason is Reason.DATABASE_UNAVAILABLE, outcome
        # Each caller raises its own object (one object raised in several tasks would
        # collect every task's traceback).
        assert len({id(outcome) for outcome in outcomes}) == len(outcomes)
        # ... and through the RPC: UNAVAILABLE with the same reason, never a hang.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await resolver(vault).ResolveTemplate(
                request([("f", "{{secret:k0}}", RAW)]), timeout=15
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(info.value).reason == "DATABASE_UNAVAILABLE"
    finally:
        await asyncio.to_thread(private_pg.restart_server)


async def test_a_callers_deadline_ends_its_wait_without_hurting_the_others(
    vault: VaultHandle,
) -> None:
    await _stocked(vault, 4)
    fetcher, cache = _fetcher(vault), vault.runtime.vault.cache
    fetcher.max_in_flight = 1
    read_done, release = asyncio.Event(), asyncio.Event()

    async def hold_the_batch() -> None:
        read_done.set()
        await release.wait()

    async def within(seconds: float, names: list[str]) -> object:
        try:
            async with asyncio.timeout(seconds):
                return await fetcher.fetch(names, [])
        except TimeoutError:
            return "deadline"

    cache.before_store = hold_the_batch
    try:
        # Batch 1 (k0 and k1) is in flight and held; its k0 caller's deadline passes.
        early = asyncio.create_task(within(0.2, ["k0"]))
        patient = asyncio.create_task(within(30, ["k1"]))
        await asyncio.wait_for(read_done.wait(), 10)
        cache.before_store = None
        # Queued behind it (one slot): batch 2, whose only caller gives up, and batch 3 ...
        started = time.monotonic()
        assert await within(0.2, ["k2"]) == "deadline"
        assert time.monotonic() - started < 2  # not stuck behind the held batch
        assert await early == "deadline"
        queued = asyncio.create_task(within(30, ["k3"]))
        await asyncio.sleep(0.05)
        before = fetcher.queries
        release.set()
        rows, _ = await patient  # type: ignore[misc]
        assert list(rows) == ["k1"]
        rows, _ = await queued  # type: ignore[misc]
        assert list(rows) == ["k3"]
        # The abandoned batch (k2) never ran: only k3's query started after the release.
        assert fetcher.queries == before + 1
        assert cache.peek("s", "k2") is None and cache.peek("s", "k3") is not None
    finally:
        cache.before_store = None
        release.set()


async def test_a_batch_whose_callers_all_left_is_cancelled(vault: VaultHandle) -> None:
    await _stocked(vault, 1)
    fetcher, cache = _fetcher(vault), vault.runtime.vault.cache
    read_done, never = asyncio.Event(), asyncio.Event()

    async def hold_the_batch() -> None:
        read_done.set()
        await never.wait()

    cache.before_store = hold_the_batch
    try:
        waiting = asyncio.create_task(fetcher.fetch(["k0"], []))
        await asyncio.wait_for(read_done.wait(), 10)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        for _ in range(100):
            if fetcher.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert fetcher.in_flight == 0 and cache.peek("s", "k0") is None
    finally:
        cache.before_store = None
    rows, _ = await fetcher.fetch(["k0"], [])  # the fetcher is still in service
    assert list(rows) == ["k0"]
