"""The drain gate behind the vault's one interceptor: it counts every checked call from its
start until grpc reports it done (open methods are not counted), and once closed it refuses
checked calls with UNAVAILABLE while health still answers."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from interakt.vault.v1 import secret_service_pb2 as pb
from interakt.vault.v1 import secret_service_pb2_grpc as pbg

from tests.support.rpc import error_info
from tests.support.vault import VaultHandle


async def test_the_gate_counts_checked_calls_in_flight_and_refuses_once_closed(
    vault: VaultHandle,
) -> None:
    gate = vault.runtime.drain
    stub = pbg.SecretServiceStub(vault.channel("admin"))
    health = health_pb2_grpc.HealthStub(vault.channel(None))
    await stub.CreateSecret(pb.CreateSecretRequest(name="locked", value="v"))
    await health.Check(health_pb2.HealthCheckRequest())
    assert await gate.settled(5.0) and gate.serving == 0

    blocker = await asyncpg.connect(vault.database_url, timeout=10)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM secrets WHERE name = 'locked' FOR UPDATE")
        in_flight = asyncio.ensure_future(
            stub.UpdateSecret(pb.UpdateSecretRequest(name="locked", description="x"), timeout=30)
        )
        deadline = time.monotonic() + 10
        while gate.serving == 0:
            assert time.monotonic() < deadline, "the update was never counted"
            await asyncio.sleep(0.01)
        await health.Check(health_pb2.HealthCheckRequest())
        assert gate.serving == 1  # the update, not the health check
        assert not await gate.settled(0.2)

        gate.close()
        with_error: grpc.aio.AioRpcError | None = None
        try:
            await stub.ListSecrets(pb.ListSecretsRequest(), timeout=5)
        except grpc.aio.AioRpcError as err:
            with_error = err
        assert with_error is not None and with_error.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(with_error).reason == "UNAVAILABLE"
        assert gate.refused == 1 and gate.serving == 1  # a refusal is not served
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        await tx.rollback()
        assert (await in_flight).description == "x"  # admitted before closing: served
        assert await gate.settled(5.0) and gate.serving == 0
    finally:
        await blocker.close()
