"""Transport hardening: message size limit, concurrent RPC cap, keepalive enforcement."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import grpc
import pytest
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rgrpc
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as sgrpc

from tests.support.vault import VaultFactory, VaultHandle

MiB = 1024 * 1024


async def test_oversized_request_is_resource_exhausted_and_the_server_survives(
    vault: VaultHandle,
) -> None:
    resolver = rgrpc.ResolverServiceStub(vault.channel("resolver"))
    admin = sgrpc.SecretServiceStub(vault.channel("admin"))
    huge = "x" * (5 * MiB)
    for call in (
        resolver.ResolveTemplate(
            rpb.ResolveTemplateRequest(fields=[rpb.TemplateField(key="k", template=huge)]),
            timeout=20,
        ),
        admin.CreateSecret(spb.CreateSecretRequest(name="big", value=huge), timeout=20),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Same channels, same server: still serving.
    reply = await resolver.ResolveTemplate(
        rpb.ResolveTemplateRequest(fields=[rpb.TemplateField(key="k", template="ok")]), timeout=10
    )
    assert reply.fields[0].value == "ok"
    assert (await admin.ListSecrets(spb.ListSecretsRequest(), timeout=10)).total_size == 0


async def test_concurrent_rpcs_are_capped(make_vault: VaultFactory) -> None:
    vault = await make_vault(max_concurrent_rpcs=1, max_queued_rpcs=0)
    viewer = sgrpc.SecretServiceStub(vault.channel("viewer"))
    await viewer.ListSecrets(spb.ListSecretsRequest(), timeout=10)  # connect first

    # Hold one RPC inside the vault: it waits on a table lock this test owns.
    blocker = await asyncpg.connect(vault.database_url, timeout=10)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE secrets IN ACCESS EXCLUSIVE MODE")

        async def slow_get() -> spb.Secret:
            return await viewer.GetSecret(spb.GetSecretRequest(name="anything"), timeout=20)

        held = asyncio.create_task(slow_get())
        deadline = time.monotonic() + 10
        while not await blocker.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'vaultsvc' AND wait_event_type = 'Lock'"
        ):
            assert time.monotonic() < deadline, "the first RPC never reached the database"
            await asyncio.sleep(0.05)

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await viewer.GetVaultStats(spb.GetVaultStatsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # shed: OVERLOADED
        await transaction.rollback()
    finally:
        await blocker.close()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await held
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # The slot is free again.
    await viewer.GetVaultStats(spb.GetVaultStatsRequest(), timeout=10)


async def test_clients_pinging_too_often_are_sent_away(vault: VaultHandle) -> None:
    """The server enforces a minimum ping interval (keepalive abuse costs it nothing)."""
    channel = grpc.aio.insecure_channel(
        vault.address,
        options=[
            ("grpc.keepalive_time_ms", 200),
            ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    vault.channels.append(channel)
    stub = sgrpc.SecretServiceStub(channel)
    metadata = [("authorization", f"Bearer {vault.tokens['viewer']}")]
    await stub.GetVaultStats(spb.GetVaultStatsRequest(), metadata=metadata, timeout=10)
    assert channel.get_state() == grpc.ChannelConnectivity.READY
    # After a few pings inside the minimum interval the server closes the connection
    # (GOAWAY ENHANCE_YOUR_CALM "too_many_pings"); the channel leaves READY.
    await asyncio.wait_for(
        channel.wait_for_state_change(grpc.ChannelConnectivity.READY), timeout=20
    )
    assert channel.get_state() != grpc.ChannelConnectivity.READY
    # A well-behaved client is unaffected.
    polite = sgrpc.SecretServiceStub(vault.channel("viewer"))
    await polite.GetVaultStats(spb.GetVaultStatsRequest(), timeout=10)
