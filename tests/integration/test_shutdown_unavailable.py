"""Issue 15 item 12 (first half): calls that arrive while the vault stops get UNAVAILABLE,
which clients retry, never CANCELLED."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import grpc
from interakt.vault.v1 import secret_service_pb2 as pb
from interakt.vault.v1 import secret_service_pb2_grpc as pbg

from tests.support.rpc import bearer, error_info, retry_info
from tests.support.vault import create_database, start_vault
from vaultsvc.server import stop_server
from vaultsvc.storage.embedded import EmbeddedPostgres


async def test_calls_arriving_during_shutdown_get_unavailable(pg: EmbeddedPostgres) -> None:
    vault = await start_vault(await create_database(pg), shutdown_delay=0.3, grace_period=10.0)
    md = bearer(vault.tokens["admin"])
    stopping: asyncio.Future[None] | None = None
    try:
        async with grpc.aio.insecure_channel(vault.address) as channel:
            stub = pbg.SecretServiceStub(channel)
            await stub.CreateSecret(pb.CreateSecretRequest(name="locked", value="v"), metadata=md)
            # An in-flight call keeps the vault draining while new calls arrive.
            blocker = await asyncpg.connect(vault.database_url, timeout=10)
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("SELECT 1 FROM secrets WHERE name = 'locked' FOR UPDATE")
            in_flight = asyncio.ensure_future(
                stub.UpdateSecret(
                    pb.UpdateSecretRequest(name="locked", description="finished"),
                    metadata=md,
                    timeout=30,
                )
            )
            await asyncio.sleep(0.3)
            stopping = asyncio.ensure_future(stop_server(vault.runtime))
            served = 0
            deadline = time.monotonic() + 10
            while True:  # a client calling steadily, as SIGTERM begins and after
                assert time.monotonic() < deadline, "never refused"
                try:
                    await stub.ListSecrets(pb.ListSecretsRequest(), metadata=md, timeout=5)
                    served += 1
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
                    info = error_info(err)
                    assert info.reason == "UNAVAILABLE"
                    assert "shutting down" in str(err.details())
                    assert info.metadata["request_id"]
                    retry = retry_info(err)  # clients are told when to retry (elsewhere)
                    assert retry is not None and retry.retry_delay.ToTimedelta().total_seconds() > 0
                    break
                await asyncio.sleep(0.02)
            assert served > 0, "calls during shutdown_delay are still served"
            assert not in_flight.done()
            await tx.rollback()
            await blocker.close()
            assert (await in_flight).description == "finished"
        await asyncio.wait_for(stopping, timeout=30)
    finally:
        if stopping is None:
            await stop_server(vault.runtime, grace=0.5)
