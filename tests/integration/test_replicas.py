"""Several stateless replicas on one database: Postgres is the only shared state."""

from __future__ import annotations

import asyncio

import grpc
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rpbg
from interakt.vault.v1 import secret_service_pb2 as pb
from interakt.vault.v1 import secret_service_pb2_grpc as pbg

from tests.support.vault import VaultFactory


async def test_replicas_share_everything_through_postgres(make_vault: VaultFactory) -> None:
    first = await make_vault()
    replicas = [first] + [
        await make_vault(
            database_url=first.database_url, master_keys=first.master_keys, tokens=first.tokens
        )
        for _ in range(2)
    ]
    admins = [pbg.SecretServiceStub(r.channel("admin")) for r in replicas]
    resolvers = [rpbg.ResolverServiceStub(r.channel("resolver")) for r in replicas]

    # The same name created on every replica at once: exactly one wins.
    results = await asyncio.gather(
        *(
            a.CreateSecret(pb.CreateSecretRequest(name="shared", value=f"v{i}"))
            for i, a in enumerate(admins)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, pb.Secret)]
    assert len(winners) == 1
    assert all(
        isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.ALREADY_EXISTS
        for r in results
        if not isinstance(r, pb.Secret)
    )
    winning_value = f"v{results.index(winners[0])}"

    # Written on one, read and resolved on every other.
    request = rpb.ResolveTemplateRequest(
        fields=[rpb.TemplateField(key="h", template="{{secret:shared}}")]
    )
    for admin, resolver in zip(admins, resolvers, strict=True):
        read = await admin.GetSecret(pb.GetSecretRequest(name="shared"))
        read.usage.CopyFrom(winners[0].usage)  # resolves below add to it
        assert read == winners[0]
        assert (await resolver.ResolveTemplate(request)).fields[0].value == winning_value

    # An etag from one replica is checked by another.
    updated = await admins[1].UpdateSecret(
        pb.UpdateSecretRequest(name="shared", value="new", etag=winners[0].etag)
    )
    try:
        await admins[2].UpdateSecret(
            pb.UpdateSecretRequest(name="shared", description="stale", etag=winners[0].etag)
        )
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.ABORTED
    else:
        raise AssertionError("a stale etag was accepted by another replica")
    await replicas[0].caught_up()  # its cache hears of the change by notification
    assert (await resolvers[0].ResolveTemplate(request)).fields[0].value == "new"

    # Counters are the database's, not a replica's.
    await admins[2].DeleteSecret(
        pb.DeleteSecretRequest(name="shared", etag=updated.etag, force=True)
    )
    for admin in admins:
        stats = await admin.GetVaultStats(pb.GetVaultStatsRequest())
        assert stats.total_secrets == 0
        assert stats.last_update_time.ToDatetime() >= updated.update_time.ToDatetime()
