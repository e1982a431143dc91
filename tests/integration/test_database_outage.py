"""Postgres stops under a running vault: UNAVAILABLE quickly, then recovery by itself."""

from __future__ import annotations

import asyncio
import time

import grpc
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rpbg
from interakt.vault.v1 import secret_service_pb2 as pb
from interakt.vault.v1 import secret_service_pb2_grpc as pbg

from tests.support.vault import VaultFactory, create_database
from vaultsvc.storage.embedded import EmbeddedPostgres


async def test_postgres_down_gives_unavailable_fast_and_recovers(
    private_pg: EmbeddedPostgres, make_vault: VaultFactory
) -> None:
    vault = await make_vault(database_url=await create_database(private_pg))
    secrets = pbg.SecretServiceStub(vault.channel("admin"))
    resolver = rpbg.ResolverServiceStub(vault.channel("resolver"))
    await secrets.CreateSecret(pb.CreateSecretRequest(name="k", value="value-1"))
    request = rpb.ResolveTemplateRequest(
        fields=[
            rpb.TemplateField(key="h", template="Bearer {{secret:k}}", encoding=rpb.ENCODING_HEADER)
        ]
    )
    assert (await resolver.ResolveTemplate(request)).fields[0].value == "Bearer value-1"

    await asyncio.to_thread(private_pg.stop_server)

    deadline = 5.0
    for call in (
        lambda: secrets.GetSecret(pb.GetSecretRequest(name="k"), timeout=deadline),
        lambda: secrets.CreateSecret(
            pb.CreateSecretRequest(name="k2", value="v"), timeout=deadline
        ),
        lambda: secrets.ListSecrets(pb.ListSecretsRequest(), timeout=deadline),
        lambda: resolver.ResolveTemplate(request, timeout=deadline),
    ):
        started = time.monotonic()
        try:
            await call()
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
        else:
            raise AssertionError("a call succeeded with the database down")
        # No hang: the server answers before the client's deadline would have fired.
        assert time.monotonic() - started < deadline

    await asyncio.to_thread(private_pg.restart_server)

    # The pool reconnects by itself; no restart of the vault.
    recovered = False
    for _ in range(50):
        try:
            got = await secrets.GetSecret(pb.GetSecretRequest(name="k"), timeout=5)
            recovered = got.name == "k"
            break
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.2)
    assert recovered
    assert (await resolver.ResolveTemplate(request)).fields[0].value == "Bearer value-1"
    created = await secrets.CreateSecret(pb.CreateSecretRequest(name="after", value="v"))
    assert created.name == "after"
