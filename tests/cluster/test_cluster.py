"""The cluster test (issue 13, item 6): Debian's PostgreSQL 15, pgbouncer 1.18 in
transaction mode, three ``vaultsvc serve`` replicas and haproxy as the gRPC balancer, all
on this machine (topology: :mod:`tests.support.cluster`).

``make test`` runs the first test (one consistent vault through the balancer, a change
seen by every replica, pgbouncer's transaction mode); ``make cluster-test`` runs all of
them, adding a Postgres restart and a replica killed under load (marker ``cluster``).

Clients are plain generated stubs: no client-side retries anywhere, so every failure an
RPC meets is counted.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
import pytest_asyncio
from interakt.vault.v1 import audit_service_pb2 as apb
from interakt.vault.v1 import audit_service_pb2_grpc as apbg
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rpbg
from interakt.vault.v1 import secret_service_pb2 as pb
from interakt.vault.v1 import secret_service_pb2_grpc as pbg

from tests.support.cluster import POOL_SIZE, REPLICAS, Cluster, running_cluster
from tests.support.vault import AuthInterceptor
from vaultsvc.storage.db import migration_files

#: How long a change committed through one replica may take to reach every other's cache.
VISIBILITY_BOUND = 5.0


@pytest_asyncio.fixture(scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    async with running_cluster() as started:
        yield started


def _channel(target: str, token: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, interceptors=[AuthInterceptor(token)])


def _resolve_request(*names: str) -> rpb.ResolveTemplateRequest:
    return rpb.ResolveTemplateRequest(
        fields=[rpb.TemplateField(key=n, template=f"{{{{secret:{n}}}}}") for n in names],
        tool="cluster-test",
    )


async def _resolved(stub: rpbg.ResolverServiceStub, name: str) -> str:
    reply = await stub.ResolveTemplate(_resolve_request(name), timeout=10)
    return str(reply.fields[0].value)


async def _until(what: str, bound: float, check: object) -> float:
    """Poll ``check()`` (a coroutine function returning bool) until true; seconds taken."""
    assert callable(check)
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > bound:
            raise AssertionError(f"{what}: not within {bound} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_one_vault_through_haproxy_and_pgbouncer_transaction_mode(cluster: Cluster) -> None:
    # pgbouncer is stock: the startup parameters the vault used to send are refused.
    with pytest.raises(asyncpg.PostgresError, match="unsupported startup parameter"):
        await asyncpg.connect(
            cluster.pooled_url, timeout=10, server_settings={"statement_timeout": "1000"}
        )
    # The migrations ran on Debian's PostgreSQL 15, once.
    version = (await cluster.superuser_sql("SHOW server_version_num"))[0][0]
    assert version.startswith("15"), version
    conn = await asyncpg.connect(cluster.direct_url, timeout=10)
    try:
        applied = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
    finally:
        await conn.close()
    assert sorted(applied) == [v for v, _, _ in migration_files()]

    lb = _channel(cluster.balancer, cluster.tokens["admin"])
    lb_resolver = _channel(cluster.balancer, cluster.tokens["resolver"])
    direct = [_channel(r.address, cluster.tokens["admin"]) for r in cluster.replicas]
    direct_resolver = [_channel(r.address, cluster.tokens["resolver"]) for r in cluster.replicas]
    try:
        admin = pbg.SecretServiceStub(lb)
        resolver = rpbg.ResolverServiceStub(lb_resolver)

        # (a) One vault through the balancer: the same name created six times at once
        # (spread over the replicas by haproxy) has exactly one winner.
        results = await asyncio.gather(
            *(
                admin.CreateSecret(pb.CreateSecretRequest(name="shared", value=f"v{i}"), timeout=10)
                for i in range(6)
            ),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, pb.Secret)]
        assert len(winners) == 1, results
        losers = [r for r in results if not isinstance(r, pb.Secret)]
        assert all(
            isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.ALREADY_EXISTS
            for r in losers
        ), losers
        winning_value = f"v{results.index(winners[0])}"
        values = {f"app_{i}": f"value-{i}" for i in range(12)}
        await asyncio.gather(
            *(
                admin.CreateSecret(pb.CreateSecretRequest(name=n, value=v), timeout=10)
                for n, v in values.items()
            )
        )
        # Every read through the balancer, whichever replica serves it, sees the same vault.
        for _ in range(3):
            gets = await asyncio.gather(
                *(admin.GetSecret(pb.GetSecretRequest(name="shared"), timeout=10) for _ in range(9))
            )
            assert {g.etag for g in gets} == {winners[0].etag}
            stats = await asyncio.gather(
                *(admin.GetVaultStats(pb.GetVaultStatsRequest(), timeout=10) for _ in range(6))
            )
            assert {s.total_secrets for s in stats} == {13}
            resolved = await asyncio.gather(
                *(_resolved(resolver, name) for name in [*values, "shared"])
            )
            assert resolved == [*values.values(), winning_value]
        # Paging through the balancer: each page may come from another replica (and the
        # name search runs on PostgreSQL 15's pg_trgm).
        listed: list[str] = []
        token = ""
        while True:
            page = await admin.ListSecrets(
                pb.ListSecretsRequest(page_size=5, page_token=token, name_contains="APP_"),
                timeout=10,
            )
            listed += [s.name for s in page.secrets]
            token = page.next_page_token
            if not token:
                break
        assert sorted(listed) == sorted(values)
        served = cluster.served_by_replica()
        assert len(served) == REPLICAS and all(n > 0 for n in served.values()), served

        # (b) A change through one replica is seen through every replica: their caches
        # are warm with the old value first, so the new one comes by notification.
        resolvers = [rpbg.ResolverServiceStub(c) for c in direct_resolver]
        for stub in resolvers:
            assert await _resolved(stub, "shared") == winning_value
        writer = pbg.SecretServiceStub(direct[0])
        updated = await writer.UpdateSecret(
            pb.UpdateSecretRequest(name="shared", value="changed", etag=winners[0].etag), timeout=10
        )
        for channel in direct:  # metadata is read from the database: at once
            got = await pbg.SecretServiceStub(channel).GetSecret(
                pb.GetSecretRequest(name="shared"), timeout=10
            )
            assert got.etag == updated.etag
        for index, stub in enumerate(resolvers):

            async def sees_change(stub: rpbg.ResolverServiceStub = stub) -> bool:
                return await _resolved(stub, "shared") == "changed"

            await _until(f"replica {index} resolving the change", VISIBILITY_BOUND, sees_change)

        # (e) The audit trail is written through pgbouncer too (group commits on their own
        # connection, each in its own transaction).
        audit = apbg.AuditServiceStub(lb)
        wanted = {"CreateSecret:OK", "CreateSecret:ALREADY_EXISTS", "UpdateSecret:OK"}
        wanted.add("ResolveTemplate:OK")

        async def audited() -> bool:
            reply = await audit.ListAuditEvents(
                apb.ListAuditEventsRequest(secret_name="shared", page_size=100), timeout=10
            )
            seen = {f"{e.method.rpartition('/')[2]}:{e.outcome}" for e in reply.events}
            return wanted <= seen

        await _until("audit events through pgbouncer", 10, audited)

        # Transaction pooling is what carried all this: every replica's pool keeps 4
        # connections and the audit writer one, yet Postgres saw at most pgbouncer's
        # server connections, plus one direct LISTEN connection per replica.
        rows = await cluster.superuser_sql(
            "SELECT application_name, count(*) AS n FROM pg_stat_activity "
            "WHERE datname = 'vault' AND usename = 'vault' GROUP BY 1"
        )
        by_app = {r["application_name"]: r["n"] for r in rows}
        assert by_app.pop("vaultsvc-listener") == REPLICAS, by_app
        assert 0 < sum(by_app.values()) <= POOL_SIZE < REPLICAS * 5, by_app
    finally:
        for channel in [lb, lb_resolver, *direct, *direct_resolver]:
            await channel.close()


@pytest.mark.cluster
async def test_postgres_restart_is_survived_by_every_replica(cluster: Cluster) -> None:
    channels = [_channel(r.address, cluster.tokens["admin"]) for r in cluster.replicas]
    stubs = [pbg.SecretServiceStub(c) for c in channels]
    try:
        await stubs[0].CreateSecret(
            pb.CreateSecretRequest(name="before_restart", value="x"), timeout=10
        )
        await asyncio.to_thread(cluster.postgres.stop, signal.SIGINT)  # fast shutdown
        # Down: every replica answers promptly, and with UNAVAILABLE.
        for index, stub in enumerate(stubs):
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.GetSecret(pb.GetSecretRequest(name="before_restart"), timeout=30)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, (index, failed.value)
            assert time.monotonic() - started < 15, index
        cluster.postgres.start()
        await cluster.wait_postgres()
        restarted = time.monotonic()
        # Up again: every replica (never restarted) serves again within a bounded time.
        for index, stub in enumerate(stubs):

            async def serves(stub: pbg.SecretServiceStub = stub, index: int = index) -> bool:
                try:
                    await stub.GetSecret(pb.GetSecretRequest(name="before_restart"), timeout=5)
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE, (index, err)
                    return False
                return True

            await _until(f"replica {index} serving after the restart", 30, serves)
        assert all(r.proc.returncode is None for r in cluster.replicas)
        # Writes, notifications (the listeners reconnected) and audit work again.
        await stubs[1].CreateSecret(
            pb.CreateSecretRequest(name="after_restart", value="y"), timeout=10
        )
        for replica in cluster.replicas:
            async with _channel(replica.address, cluster.tokens["resolver"]) as channel:
                resolver = rpbg.ResolverServiceStub(channel)
                assert await _resolved(resolver, "after_restart") == "y"
        print(f"all replicas serving {time.monotonic() - restarted:.1f} s after Postgres was up")
    finally:
        for channel in channels:
            await channel.close()


@pytest.mark.cluster
async def test_replica_killed_under_load_costs_only_its_calls_in_flight(cluster: Cluster) -> None:
    lb = _channel(cluster.balancer, cluster.tokens["resolver"])
    admin_lb = _channel(cluster.balancer, cluster.tokens["admin"])
    names = [f"load_{i}" for i in range(8)]
    await asyncio.gather(
        *(
            pbg.SecretServiceStub(admin_lb).CreateSecret(
                pb.CreateSecretRequest(name=n, value=f"value-of-{n}"), timeout=10
            )
            for n in names
        )
    )
    resolver = rpbg.ResolverServiceStub(lb)
    in_flight = 0
    calls: list[tuple[float, float, grpc.StatusCode]] = []
    stop = asyncio.Event()

    async def client(index: int) -> None:
        nonlocal in_flight
        name = names[index % len(names)]
        while not stop.is_set():
            started = time.monotonic()
            in_flight += 1
            code = grpc.StatusCode.OK
            try:
                assert await _resolved(resolver, name) == f"value-of-{name}"
            except grpc.aio.AioRpcError as err:
                code = err.code()
            finally:
                in_flight -= 1
            calls.append((started, time.monotonic(), code))

    victim = cluster.replicas[-1]
    try:
        clients = [asyncio.create_task(client(i)) for i in range(24)]
        await asyncio.sleep(2)
        in_flight_at_kill = in_flight
        killed_at = time.monotonic()
        victim.proc.kill()  # SIGKILL: no drain, no goodbye
        await victim.proc.wait()
        dead_at = time.monotonic()  # the kernel has torn its sockets down
        await asyncio.sleep(3)
        stop.set()
        await asyncio.gather(*clients)
    finally:
        await lb.close()
        await admin_lb.close()
    failures = [c for c in calls if c[2] != grpc.StatusCode.OK]
    # The calls in flight while the replica died: started before it was dead, not finished
    # before the kill (on every replica: which ones haproxy had sent to it is not visible).
    dying = [c for c in calls if c[0] <= dead_at and c[1] >= killed_at]
    after = [c for c in calls if c[0] > dead_at]
    print(
        f"{len(calls)} calls; {in_flight_at_kill} in flight at the kill, {len(dying)} while "
        f"the replica died ({(dead_at - killed_at) * 1000:.0f} ms), all replicas; "
        f"{len(failures)} failed: {sorted({c[2].name for c in failures})}; "
        f"{len(after)} started after, none failed"
    )
    assert len(after) > 100, len(after)
    # Only calls in flight on the replica when it died may fail (no client retries); every
    # call started after it died succeeds (haproxy sends it to a live replica).
    assert set(failures) <= set(dying), failures
    assert len(failures) <= len(dying)
    assert all(c[2] == grpc.StatusCode.OK for c in after)
    assert all(c[2] == grpc.StatusCode.UNAVAILABLE for c in failures), failures
