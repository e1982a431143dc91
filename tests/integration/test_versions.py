"""Versions, rollback, destroy, recoverable deletion, purge and IdentifySecretValue against
a real vault (embedded Postgres, grpc.aio server over a real channel, real crypto)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from interakt.vault.v1 import audit_service_pb2 as apb
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as sgrpc

from tests.support.keys import resolve, resolve_many
from tests.support.rpc import audit_admin, expect_error, resolver, retry_info, secrets_admin
from tests.support.vault import VaultFactory, VaultHandle
from vaultsvc.auth import ADMIN, TokenEntry, hash_token, new_token
from vaultsvc.server import start_server, stop_server
from vaultsvc.vault.purge import Purger

ENABLED = spb.SecretVersion.STATE_ENABLED
DESTROYED = spb.SecretVersion.STATE_DESTROYED


async def versions(admin: sgrpc.SecretServiceStub, name: str) -> list[tuple[int, int, bool]]:
    reply = await admin.ListSecretVersions(spb.ListSecretVersionsRequest(name=name), timeout=10)
    return [(v.version, v.state, v.current) for v in reply.versions]


async def test_wrong_value_rotation_is_rolled_back(vault: VaultHandle) -> None:
    admin, stub = secrets_admin(vault), resolver(vault)
    created = await admin.CreateSecret(spb.CreateSecretRequest(name="orders", value="good-1"))
    assert created.current_version == 1
    rotated = await admin.UpdateSecret(spb.UpdateSecretRequest(name="orders", value="typo"))
    assert rotated.current_version == 2
    assert await resolve(stub, "orders") == "typo"

    listing = await admin.ListSecretVersions(spb.ListSecretVersionsRequest(name="orders"))
    assert [(v.version, v.state, v.current) for v in listing.versions] == [
        (2, ENABLED, True),
        (1, ENABLED, False),
    ]
    assert {v.created_by for v in listing.versions} == {"test-admin"}

    await expect_error(
        admin.RollbackSecret(spb.RollbackSecretRequest(name="orders", version=1, etag="stale")),
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
    )
    rolled = await admin.RollbackSecret(
        spb.RollbackSecretRequest(name="orders", version=1, etag=rotated.etag)
    )
    assert rolled.current_version == 3 and rolled.etag != rotated.etag
    assert await resolve(stub, "orders") == "good-1"
    assert await versions(admin, "orders") == [
        (3, ENABLED, True),
        (2, ENABLED, False),
        (1, ENABLED, False),
    ]
    # Re-sealed, not copied: version 3 has its own data key and ciphertext.
    rows = await vault.sql(
        "SELECT v.version, v.wrapped_dek, v.ciphertext FROM secret_versions v "
        "JOIN secrets s ON s.id = v.secret_id WHERE s.name = 'orders' ORDER BY v.version"
    )
    assert rows[0]["ciphertext"] != rows[2]["ciphertext"]
    assert rows[0]["wrapped_dek"] != rows[2]["wrapped_dek"]

    # Writing the identical value again is a version too.
    again = await admin.UpdateSecret(spb.UpdateSecretRequest(name="orders", value="good-1"))
    assert again.current_version == 4

    for version, reason, code in (
        (9, "VERSION_NOT_FOUND", grpc.StatusCode.NOT_FOUND),
        (0, "INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        await expect_error(
            admin.RollbackSecret(spb.RollbackSecretRequest(name="orders", version=version)),
            code,
            reason,
        )
    await expect_error(
        admin.RollbackSecret(spb.RollbackSecretRequest(name="ghost", version=1)),
        grpc.StatusCode.NOT_FOUND,
        "SECRET_NOT_FOUND",
    )
    # Viewers list versions; only admins roll back or destroy.
    viewer = sgrpc.SecretServiceStub(vault.channel("viewer"))
    assert (
        len(
            (await viewer.ListSecretVersions(spb.ListSecretVersionsRequest(name="orders"))).versions
        )
        == 4
    )
    for call in (
        viewer.RollbackSecret(spb.RollbackSecretRequest(name="orders", version=1)),
        viewer.DestroySecretVersion(spb.DestroySecretVersionRequest(name="orders", version=1)),
        viewer.RestoreSecret(spb.RestoreSecretRequest(name="orders")),
        viewer.IdentifySecretValue(spb.IdentifySecretValueRequest(value="good-1")),
    ):
        await expect_error(call, grpc.StatusCode.PERMISSION_DENIED)


async def test_versions_page_newest_first(vault: VaultHandle) -> None:
    admin = secrets_admin(vault)
    await admin.CreateSecret(spb.CreateSecretRequest(name="paged", value="v1"))
    for n in range(2, 6):
        await admin.UpdateSecret(spb.UpdateSecretRequest(name="paged", value=f"v{n}"))
    seen: list[int] = []
    token = ""
    while True:
        reply = await admin.ListSecretVersions(
            spb.ListSecretVersionsRequest(name="paged", page_size=2, page_token=token)
        )
        seen += [v.version for v in reply.versions]
        token = reply.next_page_token
        if not token:
            break
    assert seen == [5, 4, 3, 2, 1]
    await expect_error(
        admin.ListSecretVersions(
            spb.ListSecretVersionsRequest(name="other", page_token="bm90LWEtdG9rZW4")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )


async def test_max_versions_prunes_and_destroy_removes_sealed_data(
    make_vault: VaultFactory,
) -> None:
    vault = await make_vault(max_versions=3)
    admin, stub = secrets_admin(vault), resolver(vault)
    await admin.CreateSecret(spb.CreateSecretRequest(name="rot", value="value-1"))
    for n in range(2, 6):
        await admin.UpdateSecret(spb.UpdateSecretRequest(name="rot", value=f"value-{n}"))
    assert await versions(admin, "rot") == [
        (5, ENABLED, True),
        (4, ENABLED, False),
        (3, ENABLED, False),
        (2, DESTROYED, False),
        (1, DESTROYED, False),
    ]
    sealed = """SELECT v.version, v.kek_id, v.wrapped_dek, v.ciphertext, v.fingerprint,
                       v.fingerprint_key_id, v.destroy_time, v.create_time, v.created_by
                  FROM secret_versions v JOIN secrets s ON s.id = v.secret_id
                 WHERE s.name = $1 ORDER BY v.version"""
    rows = await vault.sql(sealed, "rot")
    for row in rows:
        gone = row["version"] <= 2
        fields = [row[c] for c in ("kek_id", "wrapped_dek", "ciphertext", "fingerprint")]
        assert all(f is None for f in fields) if gone else all(f is not None for f in fields)
        assert (row["destroy_time"] is not None) == gone
        assert row["create_time"] is not None and row["created_by"] == "test-admin"
    await expect_error(
        admin.RollbackSecret(spb.RollbackSecretRequest(name="rot", version=2)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "VERSION_DESTROYED",
    )

    # Destroy one old version explicitly; the current one cannot be destroyed.
    await admin.DestroySecretVersion(spb.DestroySecretVersionRequest(name="rot", version=3))
    row3 = (await vault.sql(sealed, "rot"))[2]
    assert row3["ciphertext"] is None and row3["wrapped_dek"] is None
    assert row3["fingerprint"] is None and row3["fingerprint_key_id"] is None
    assert (await versions(admin, "rot"))[2] == (3, DESTROYED, False)
    matches = await admin.IdentifySecretValue(spb.IdentifySecretValueRequest(value="value-3"))
    assert list(matches.matches) == []
    await expect_error(
        admin.DestroySecretVersion(spb.DestroySecretVersionRequest(name="rot", version=5)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "VERSION_IS_CURRENT",
    )
    await expect_error(
        admin.DestroySecretVersion(spb.DestroySecretVersionRequest(name="rot", version=77)),
        grpc.StatusCode.NOT_FOUND,
        "VERSION_NOT_FOUND",
    )
    assert await resolve(stub, "rot") == "value-5"
    await admin.RollbackSecret(spb.RollbackSecretRequest(name="rot", version=4))
    assert await resolve(stub, "rot") == "value-4"


async def test_delete_is_recoverable_and_reserves_the_name(vault: VaultHandle) -> None:
    admin, stub = secrets_admin(vault), resolver(vault)
    await admin.CreateSecret(spb.CreateSecretRequest(name="Payments", value="pay-1"))
    await admin.UpdateSecret(spb.UpdateSecretRequest(name="Payments", value="pay-2"))
    await admin.CreateSecret(spb.CreateSecretRequest(name="other", value="o"))
    assert (await admin.GetVaultStats(spb.GetVaultStatsRequest())).total_secrets == 2

    await admin.DeleteSecret(spb.DeleteSecretRequest(name="payments", force=True))
    message, info = await expect_error(
        stub.ResolveTemplate(_template("Payments"), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "SECRET_DELETED",
    )
    assert "scheduled for deletion" in message and "restor" in message
    assert info.metadata["names"] == "Payments"
    # A scheduled one and a missing one together: SECRET_NOT_FOUND naming both.
    message, info = await expect_error(
        stub.ResolveTemplate(_template("Payments", "nosuch"), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "SECRET_NOT_FOUND",
    )
    assert info.metadata["names"] == "nosuch,Payments"
    await expect_error(
        admin.CreateSecret(spb.CreateSecretRequest(name="PAYMENTS", value="x")),
        grpc.StatusCode.ALREADY_EXISTS,
        "NAME_RESERVED",
    )
    await expect_error(
        admin.UpdateSecret(spb.UpdateSecretRequest(name="payments", value="x")),
        grpc.StatusCode.NOT_FOUND,
        "SECRET_DELETED",
    )
    assert (await admin.GetVaultStats(spb.GetVaultStatsRequest())).total_secrets == 1

    live = await admin.ListSecrets(spb.ListSecretsRequest())
    assert [s.name for s in live.secrets] == ["other"] and live.total_size == 1
    everything = await admin.ListSecrets(spb.ListSecretsRequest(show_deleted=True))
    assert [s.name for s in everything.secrets] == ["other", "Payments"]
    assert everything.total_size == 2
    scheduled = everything.secrets[1]
    assert scheduled.HasField("delete_time") and scheduled.HasField("purge_time")
    window = scheduled.purge_time.ToDatetime() - scheduled.delete_time.ToDatetime()
    assert window == timedelta(days=7)
    assert not everything.secrets[0].HasField("delete_time")

    restored = await admin.RestoreSecret(spb.RestoreSecretRequest(name="payments"))
    assert restored.current_version == 2 and not restored.HasField("delete_time")
    assert await resolve(stub, "Payments") == "pay-2"
    assert await versions(admin, "Payments") == [(2, ENABLED, True), (1, ENABLED, False)]
    assert (await admin.GetVaultStats(spb.GetVaultStatsRequest())).total_secrets == 2
    await expect_error(
        admin.RestoreSecret(spb.RestoreSecretRequest(name="payments")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SECRET_NOT_DELETED",
    )

    # purge: true deletes at once, also a secret already scheduled.
    await admin.DeleteSecret(spb.DeleteSecretRequest(name="other", purge=True))
    await admin.DeleteSecret(spb.DeleteSecretRequest(name="payments", force=True))
    await admin.DeleteSecret(spb.DeleteSecretRequest(name="payments", purge=True))
    assert await vault.sql("SELECT name FROM secrets") == []
    assert await vault.sql("SELECT 1 FROM secret_versions") == []
    assert (await admin.GetVaultStats(spb.GetVaultStatsRequest())).total_secrets == 0
    await admin.CreateSecret(spb.CreateSecretRequest(name="payments", value="fresh"))
    assert await resolve(stub, "payments") == "fresh"


async def test_zero_recovery_days_deletes_at_once(make_vault: VaultFactory) -> None:
    vault = await make_vault(delete_recovery_days=0)
    admin = secrets_admin(vault)
    await admin.CreateSecret(spb.CreateSecretRequest(name="gone", value="v"))
    await admin.DeleteSecret(spb.DeleteSecretRequest(name="gone"))
    await expect_error(
        resolver(vault).ResolveTemplate(_template("gone"), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "SECRET_NOT_FOUND",
    )
    await admin.CreateSecret(spb.CreateSecretRequest(name="gone", value="again"))


def _later(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


async def test_purge_after_the_window_with_a_moved_clock(vault: VaultHandle) -> None:
    admin, stub = secrets_admin(vault), resolver(vault)
    await admin.CreateSecret(spb.CreateSecretRequest(name="old", value="v"))
    await admin.CreateSecret(spb.CreateSecretRequest(name="kept", value="k"))
    await admin.DeleteSecret(spb.DeleteSecretRequest(name="old"))

    early = Purger(vault.runtime.vault, interval=3600, clock=lambda: _later(6.9))
    assert await early.purge_expired() == []
    late = Purger(vault.runtime.vault, interval=3600, clock=lambda: _later(7.1))
    assert await late.purge_expired() == ["old"]
    assert await late.purge_expired() == []

    await expect_error(
        stub.ResolveTemplate(_template("old"), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "SECRET_NOT_FOUND",
    )
    await expect_error(
        admin.RestoreSecret(spb.RestoreSecretRequest(name="old")),
        grpc.StatusCode.NOT_FOUND,
        "SECRET_NOT_FOUND",
    )
    assert await resolve(stub, "kept") == "k"
    assert (
        await vault.sql(
            "SELECT 1 FROM secret_versions v JOIN secrets s ON s.id = v.secret_id "
            "WHERE s.name = 'old'"
        )
        == []
    )
    await admin.CreateSecret(spb.CreateSecretRequest(name="old", value="reused"))
    events = await audit_admin(vault).ListAuditEvents(
        apb.ListAuditEventsRequest(principal="vaultsvc")
    )
    assert [(e.method, list(e.secret_names)) for e in events.events] == [
        ("vaultsvc/PurgeDeletedSecrets", ["old"])
    ]


async def test_concurrent_purgers_on_two_replicas(make_vault: VaultFactory) -> None:
    first = await make_vault()
    second = await make_vault(database_url=first.database_url, master_keys=first.master_keys)
    admin = secrets_admin(first)
    names = [f"s{n:03d}" for n in range(60)]
    for name in names:
        await admin.CreateSecret(spb.CreateSecretRequest(name=name, value="v"))
        await admin.DeleteSecret(spb.DeleteSecretRequest(name=name))
    purgers = [
        Purger(h.runtime.vault, interval=3600, clock=lambda: _later(8), batch_size=4)
        for h in (first, second, first, second)
    ]
    results = await asyncio.gather(*(p.purge_expired() for p in purgers))
    purged = [name for result in results for name in result]
    assert sorted(purged) == names, "every expired secret purged exactly once"
    assert await first.sql("SELECT 1 FROM secrets") == []
    stats = await admin.GetVaultStats(spb.GetVaultStatsRequest())
    assert stats.total_secrets == 0


def _template(*names: str) -> rpb.ResolveTemplateRequest:
    return rpb.ResolveTemplateRequest(
        fields=[rpb.TemplateField(key=n, template=f"{{{{secret:{n}}}}}") for n in names],
        tool="test-versions",
    )


async def test_identify_finds_current_and_old_versions(vault: VaultHandle) -> None:
    admin = secrets_admin(vault)
    await admin.CreateSecret(spb.CreateSecretRequest(name="alpha", value="leaked-token-1"))
    await admin.UpdateSecret(spb.UpdateSecretRequest(name="alpha", value="fresh-token-2"))
    await admin.CreateSecret(spb.CreateSecretRequest(name="beta", value="fresh-token-2"))

    async def identify(value: str) -> list[tuple[str, int, bool]]:
        reply = await admin.IdentifySecretValue(spb.IdentifySecretValueRequest(value=value))
        return [(m.name, m.version, m.current) for m in reply.matches]

    assert await identify("leaked-token-1") == [("alpha", 1, False)]
    assert await identify("fresh-token-2") == [("alpha", 2, True), ("beta", 1, True)]
    for near_miss in ("leaked-token-", "leaked-token-1 ", "Leaked-token-1", "leaked-token-2"):
        assert await identify(near_miss) == []
    await expect_error(
        admin.IdentifySecretValue(spb.IdentifySecretValueRequest(value="")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_VALUE",
    )
    events = await audit_admin(vault).ListAuditEvents(apb.ListAuditEventsRequest())
    identified = [e for e in events.events if e.method.endswith("/IdentifySecretValue")]
    assert [e.match_count for e in identified if e.outcome == "OK"] == [0, 0, 0, 0, 2, 1]
    assert list(identified[-1].secret_names) == ["alpha"]


async def _at_minute_start() -> None:
    """Rate windows are calendar minutes: start early in one so a test stays inside it."""
    second = time.time() % 60
    if second > 40:
        await asyncio.sleep(61 - second)


async def test_identify_rate_limits_per_principal_and_vault_wide_across_replicas(
    make_vault: VaultFactory,
) -> None:
    second_admin = new_token()
    first = await make_vault(identify_rate_per_principal=3, identify_rate_vault=5)
    # A second replica on the same database that also knows a second admin principal.
    replica_settings = replace(
        first.settings,
        tokens=(
            *first.settings.tokens,
            TokenEntry(principal="other-admin", role=ADMIN, sha256=hash_token(second_admin)),
        ),
    )
    runtime = await start_server(replica_settings)
    try:
        replica = VaultHandle(
            runtime=runtime,
            tokens=first.tokens,
            settings=replica_settings,
            database_url=first.database_url,
            master_keys=first.master_keys,
        )
        on_first = secrets_admin(first)
        on_replica = secrets_admin(replica)
        other = sgrpc.SecretServiceStub(replica.channel(token=second_admin))
        request = spb.IdentifySecretValueRequest(value="nothing-matches")
        await _at_minute_start()
        for stub in (on_first, on_replica, on_first):
            await stub.IdentifySecretValue(request)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await on_replica.IdentifySecretValue(request)
        err = caught.value
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "principal test-admin" in str(err.details())
        retry = retry_info(err)
        assert retry is not None and 0 < retry.retry_delay.ToMilliseconds() <= 60_000
        await expect_error(
            on_first.IdentifySecretValue(request),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
        )
        # A fresh principal has its own budget, but the vault-wide one (5) is shared.
        await other.IdentifySecretValue(request)
        await other.IdentifySecretValue(request)
        message, _ = await expect_error(
            other.IdentifySecretValue(request),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
        )
        assert "vault-wide" in message
        rows = await first.sql("SELECT bucket, calls FROM identify_rate ORDER BY bucket")
        assert {r["bucket"]: r["calls"] for r in rows} == {
            "*": 5,
            "p:other-admin": 2,
            "p:test-admin": 3,
        }
    finally:
        await stop_server(runtime, grace=0.5)


async def test_resolve_reads_one_snapshot_of_current_versions(vault: VaultHandle) -> None:
    admin, stub = secrets_admin(vault), resolver(vault)
    await admin.CreateSecret(spb.CreateSecretRequest(name="a", value="a1"))
    await admin.CreateSecret(spb.CreateSecretRequest(name="b", value="b1"))
    await admin.UpdateSecret(spb.UpdateSecretRequest(name="a", value="a2"))
    assert await resolve_many(stub, ["a", "b"]) == {"a": "a2", "b": "b1"}
