"""Every service is served through generic handlers only: nothing is registered with
grpc-core per method (grpc.aio would otherwise keep one pending request-call per method
and wait on all of them for every call it accepts; see vaultsvc.server.GenericHandlersOnly),
and every service, health and reflection included, still answers."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rpbg
from interakt.vault.v1 import secret_service_pb2 as pb
from interakt.vault.v1 import secret_service_pb2_grpc as pbg

from tests.support.vault import VaultFactory


async def test_no_method_is_registered_with_grpc_core_and_every_service_answers(
    make_vault: VaultFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered: list[str] = []
    original = grpc.aio._server.Server.add_registered_method_handlers

    def record(self: Any, service: str, handlers: Any) -> None:
        registered.append(service)
        original(self, service, handlers)

    monkeypatch.setattr(grpc.aio._server.Server, "add_registered_method_handlers", record)
    vault = await make_vault()
    assert registered == []

    await pbg.SecretServiceStub(vault.channel("admin")).CreateSecret(
        pb.CreateSecretRequest(name="k", value="v")
    )
    reply = await rpbg.ResolverServiceStub(vault.channel("resolver")).ResolveTemplate(
        rpb.ResolveTemplateRequest(fields=[rpb.TemplateField(key="f", template="{{secret:k}}")])
    )
    assert [(f.key, f.value) for f in reply.fields] == [("f", "v")]
    health = health_pb2_grpc.HealthStub(vault.channel(None))
    status = await health.Check(health_pb2.HealthCheckRequest())
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(vault.channel(None))
    async for answer in reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    ):
        names = {s.name for s in answer.list_services_response.service}
        assert "interakt.vault.v1.ResolverService" in names
        break
    # An unknown method is still UNIMPLEMENTED (no handler matches it).
    unknown = vault.channel("admin").unary_unary(
        "/interakt.vault.v1.SecretService/Nope",
        request_serializer=bytes,
        response_deserializer=bytes,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await unknown(b"")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
