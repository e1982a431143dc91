"""Health that means something (issue 15, item 7): readiness follows the database after
``health_db_grace``, liveness never does; Health/List and reflection v1 are served."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as alpha_pb2

from tests.support.vault import VaultFactory, create_database
from vaultsvc.storage.embedded import EmbeddedPostgres

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(stub: health_pb2_grpc.HealthStub, service: str) -> int:
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


async def _wait_for(stub: health_pb2_grpc.HealthStub, service: str, wanted: int) -> None:
    for _ in range(150):
        if await _status(stub, service) == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{service!r} never became {wanted}")


async def test_readiness_follows_the_database_and_liveness_never_does(
    private_pg: EmbeddedPostgres, make_vault: VaultFactory
) -> None:
    vault = await make_vault(database_url=await create_database(private_pg), health_db_grace=1.0)
    health = health_pb2_grpc.HealthStub(vault.channel(None))
    assert await _status(health, "") == SERVING
    assert await _status(health, "liveness") == SERVING

    await asyncio.to_thread(private_pg.stop_server)
    # Not at once: a blip shorter than the grace keeps the replica in rotation.
    assert await _status(health, "") == SERVING
    await _wait_for(health, "", NOT_SERVING)
    assert await _status(health, "liveness") == SERVING
    listed = await health.List(health_pb2.HealthListRequest(), timeout=5)
    assert listed.statuses[""].status == NOT_SERVING
    assert listed.statuses["liveness"].status == SERVING

    await asyncio.to_thread(private_pg.restart_server)
    await _wait_for(health, "", SERVING)
    assert await _status(health, "liveness") == SERVING


async def test_health_list_names_every_service(make_vault: VaultFactory) -> None:
    vault = await make_vault()
    health = health_pb2_grpc.HealthStub(vault.channel(None))
    listed = await health.List(health_pb2.HealthListRequest(), timeout=5)
    assert {"", "liveness", "interakt.vault.v1.ResolverService"} <= set(listed.statuses)
    assert all(s.status == SERVING for s in listed.statuses.values())


async def _list_services(channel: grpc.aio.Channel, method: str) -> set[str]:
    call = channel.stream_stream(
        method,
        request_serializer=alpha_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=alpha_pb2.ServerReflectionResponse.FromString,
    )
    # v1 and v1alpha messages are the same on the wire.
    replies = call(iter([alpha_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names: set[str] = set()
    async for reply in replies:
        names |= {s.name for s in reply.list_services_response.service}
    return names


async def test_reflection_v1_and_v1alpha_are_both_served(make_vault: VaultFactory) -> None:
    vault = await make_vault()
    channel = vault.channel(None)
    v1 = await _list_services(channel, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    alpha = await _list_services(
        channel, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    )
    assert v1 == alpha
    assert {"grpc.reflection.v1.ServerReflection", "interakt.vault.v1.SecretService"} <= v1

    # v1 answers file requests for its own service too.
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=alpha_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=alpha_pb2.ServerReflectionResponse.FromString,
    )
    request = alpha_pb2.ServerReflectionRequest(
        file_containing_symbol="grpc.reflection.v1.ServerReflection"
    )
    replies = [r async for r in call(iter([request]), timeout=5)]
    assert replies[0].file_descriptor_response.file_descriptor_proto
