"""SecretService against a real server, real channel, real embedded Postgres."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from interakt.vault.v1 import secret_service_pb2 as pb
from interakt.vault.v1 import secret_service_pb2_grpc as pbg

from tests.support.vault import VaultHandle


def stub(vault: VaultHandle, role: str | None = "admin") -> pbg.SecretServiceStub:
    return pbg.SecretServiceStub(vault.channel(role))


async def expect_error(call: Any, code: grpc.StatusCode, reason: str | None = None) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    err = info.value
    assert err.code() == code, (err.code(), err.details())
    status = rpc_status.from_call(err)
    assert status is not None, "every error carries a google.rpc.Status"
    assert len(status.details) == 1
    error_info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(error_info)
    assert error_info.domain == "vault.interakt"
    assert error_info.reason == error_info.reason.upper()
    if reason is not None:
        assert error_info.reason == reason, error_info.reason
    return str(err.details())


async def test_create_get_roundtrip(vault: VaultHandle) -> None:
    s = stub(vault)
    created = await s.CreateSecret(
        pb.CreateSecretRequest(name="orders_api_key", value="sk_live_1", description="orders")
    )
    assert created.name == "orders_api_key"
    assert created.description == "orders"
    assert created.etag
    assert created.create_time.seconds > 0
    assert created.create_time == created.update_time
    got = await s.GetSecret(pb.GetSecretRequest(name="orders_api_key"))
    assert got == created
    # Lookup ignores case, the stored spelling is returned.
    got = await s.GetSecret(pb.GetSecretRequest(name="ORDERS_API_KEY"))
    assert got.name == "orders_api_key"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "1abc",
        "_abc",
        "-abc",
        "has space",
        "dot.name",
        "a" * 129,
        "ümlaut",
        "a\nb",
        "a/b",
        "{{secret:x}}",
    ],
)
async def test_bad_names_are_invalid_argument(vault: VaultHandle, name: str) -> None:
    s = stub(vault)
    await expect_error(
        s.CreateSecret(pb.CreateSecretRequest(name=name, value="v")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_NAME",
    )
    await expect_error(
        s.GetSecret(pb.GetSecretRequest(name=name)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_NAME",
    )


@pytest.mark.parametrize("name", ["a", "A", "a" * 128, "Stripe-Key_2", "x-"])
async def test_good_names(vault: VaultHandle, name: str) -> None:
    s = stub(vault)
    created = await s.CreateSecret(pb.CreateSecretRequest(name=name, value="v"))
    assert created.name == name


async def test_duplicate_name_ignoring_case(vault: VaultHandle) -> None:
    s = stub(vault)
    await s.CreateSecret(pb.CreateSecretRequest(name="Stripe_Key", value="one"))
    await expect_error(
        s.CreateSecret(pb.CreateSecretRequest(name="stripe_key", value="two")),
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
    )
    stats = await s.GetVaultStats(pb.GetVaultStatsRequest())
    assert stats.total_secrets == 1


async def test_value_limits(vault: VaultHandle) -> None:
    s = stub(vault)
    await expect_error(
        s.CreateSecret(pb.CreateSecretRequest(name="empty", value="")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_VALUE",
    )
    await s.CreateSecret(pb.CreateSecretRequest(name="one_byte", value="x"))
    await s.CreateSecret(pb.CreateSecretRequest(name="max", value="x" * 65536))
    # 64 KiB is counted in UTF-8 bytes, not characters.
    await expect_error(
        s.CreateSecret(pb.CreateSecretRequest(name="too_big", value="é" * 32769)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALUE_TOO_LARGE",
    )
    await expect_error(
        s.CreateSecret(pb.CreateSecretRequest(name="too_big2", value="x" * 65537)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALUE_TOO_LARGE",
    )


async def test_description_limits(vault: VaultHandle) -> None:
    s = stub(vault)
    await s.CreateSecret(pb.CreateSecretRequest(name="d", value="v", description="é" * 1024))
    await expect_error(
        s.CreateSecret(pb.CreateSecretRequest(name="d2", value="v", description="x" * 1025)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "DESCRIPTION_TOO_LONG",
    )
    await expect_error(
        s.UpdateSecret(pb.UpdateSecretRequest(name="d", description="x" * 1025)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "DESCRIPTION_TOO_LONG",
    )


async def test_update_semantics(vault: VaultHandle) -> None:
    s = stub(vault)
    created = await s.CreateSecret(
        pb.CreateSecretRequest(name="tok", value="first", description="keep me")
    )
    rows = await vault.sql(
        "SELECT v.ciphertext, s.current_version AS value_version "
        "FROM secrets s JOIN secret_versions v "
        "ON v.secret_id = s.id AND v.version = s.current_version"
    )
    original_ciphertext = rows[0]["ciphertext"]

    # value unset and description unset: nothing but etag/update_time changes
    u1 = await s.UpdateSecret(pb.UpdateSecretRequest(name="tok"))
    assert u1.description == "keep me"
    assert u1.etag != created.etag
    assert (u1.update_time.seconds, u1.update_time.nanos) > (
        created.update_time.seconds,
        created.update_time.nanos,
    )
    assert u1.create_time == created.create_time
    rows = await vault.sql(
        "SELECT v.ciphertext, s.current_version AS value_version "
        "FROM secrets s JOIN secret_versions v "
        "ON v.secret_id = s.id AND v.version = s.current_version"
    )
    assert rows[0]["ciphertext"] == original_ciphertext and rows[0]["value_version"] == 1

    # value "" keeps the stored value too
    u2 = await s.UpdateSecret(pb.UpdateSecretRequest(name="tok", value=""))
    assert u2.etag != u1.etag
    rows = await vault.sql(
        "SELECT v.ciphertext, s.current_version AS value_version "
        "FROM secrets s JOIN secret_versions v "
        "ON v.secret_id = s.id AND v.version = s.current_version"
    )
    assert rows[0]["ciphertext"] == original_ciphertext

    # a new value replaces it (new ciphertext, next version)
    u3 = await s.UpdateSecret(pb.UpdateSecretRequest(name="tok", value="second"))
    rows = await vault.sql(
        "SELECT v.ciphertext, s.current_version AS value_version "
        "FROM secrets s JOIN secret_versions v "
        "ON v.secret_id = s.id AND v.version = s.current_version"
    )
    assert rows[0]["ciphertext"] != original_ciphertext and rows[0]["value_version"] == 2
    assert u3.description == "keep me"

    # description "" clears it
    u4 = await s.UpdateSecret(pb.UpdateSecretRequest(name="tok", description=""))
    assert u4.description == ""
    u5 = await s.UpdateSecret(pb.UpdateSecretRequest(name="tok", description="new"))
    assert u5.description == "new"
    assert len({created.etag, u1.etag, u2.etag, u3.etag, u4.etag, u5.etag}) == 6


async def test_etags(vault: VaultHandle) -> None:
    s = stub(vault)
    created = await s.CreateSecret(pb.CreateSecretRequest(name="e", value="v"))
    updated = await s.UpdateSecret(
        pb.UpdateSecretRequest(name="e", description="x", etag=created.etag)
    )
    await expect_error(
        s.UpdateSecret(pb.UpdateSecretRequest(name="e", description="y", etag=created.etag)),
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
    )
    await expect_error(
        s.DeleteSecret(pb.DeleteSecretRequest(name="e", etag=created.etag)),
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
    )
    # The failed calls lost nothing.
    assert (await s.GetSecret(pb.GetSecretRequest(name="e"))).description == "x"
    await s.DeleteSecret(pb.DeleteSecretRequest(name="e", etag=updated.etag))
    # Scheduled for deletion (restorable): NOT_FOUND with its own reason.
    await expect_error(
        s.GetSecret(pb.GetSecretRequest(name="e")), grpc.StatusCode.NOT_FOUND, "SECRET_DELETED"
    )


async def test_not_found(vault: VaultHandle) -> None:
    s = stub(vault)
    for call in (
        s.GetSecret(pb.GetSecretRequest(name="ghost")),
        s.UpdateSecret(pb.UpdateSecretRequest(name="ghost", value="v")),
        s.DeleteSecret(pb.DeleteSecretRequest(name="ghost")),
    ):
        details = await expect_error(call, grpc.StatusCode.NOT_FOUND, "SECRET_NOT_FOUND")
        assert "ghost" in details


async def test_delete_and_stats(vault: VaultHandle) -> None:
    s = stub(vault)
    empty = await s.GetVaultStats(pb.GetVaultStatsRequest())
    assert empty.total_secrets == 0
    assert not empty.HasField("last_update_time")
    await s.CreateSecret(pb.CreateSecretRequest(name="a", value="v"))
    b = await s.CreateSecret(pb.CreateSecretRequest(name="b", value="v"))
    stats = await s.GetVaultStats(pb.GetVaultStatsRequest())
    assert stats.total_secrets == 2
    assert stats.last_update_time == b.create_time
    await asyncio.sleep(0.01)
    await s.DeleteSecret(pb.DeleteSecretRequest(name="a"))
    after_delete = await s.GetVaultStats(pb.GetVaultStatsRequest())
    assert after_delete.total_secrets == 1
    # Deletes count for last_update_time.
    assert after_delete.last_update_time.ToDatetime() > stats.last_update_time.ToDatetime()
    listed = await s.ListSecrets(pb.ListSecretsRequest())
    assert [x.name for x in listed.secrets] == ["b"]


async def test_list_search_sort_and_pages(vault: VaultHandle) -> None:
    s = stub(vault)
    names = [f"key_{i:03d}" for i in range(25)] + [
        "Alpha",
        "beta",
        "GAMMA_KEY",
        "pct%_x"[:0] + "p_x",
    ]
    for n in names:
        await s.CreateSecret(pb.CreateSecretRequest(name=n, value="v"))
    first = await s.ListSecrets(pb.ListSecretsRequest())
    expected = sorted(names, key=str.lower)
    assert [x.name for x in first.secrets] == expected
    assert first.total_size == len(names)
    assert first.next_page_token == ""

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await s.ListSecrets(pb.ListSecretsRequest(page_size=7, page_token=token))
        assert page.total_size == len(names)
        assert len(page.secrets) <= 7
        seen += [x.name for x in page.secrets]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == expected
    assert pages == 5

    found = await s.ListSecrets(pb.ListSecretsRequest(name_contains="KEY"))
    assert [x.name for x in found.secrets] == sorted(
        [n for n in names if "key" in n.lower()], key=str.lower
    )
    assert found.total_size == 26
    # LIKE wildcards are literal.
    underscore = await s.ListSecrets(pb.ListSecretsRequest(name_contains="p_"))
    assert [x.name for x in underscore.secrets] == ["p_x"]
    percent = await s.ListSecrets(pb.ListSecretsRequest(name_contains="%"))
    assert percent.total_size == 0 and not percent.secrets

    # paging within a search
    page1 = await s.ListSecrets(pb.ListSecretsRequest(name_contains="key_00", page_size=10))
    assert page1.total_size == 10 and page1.next_page_token == ""
    page1 = await s.ListSecrets(pb.ListSecretsRequest(name_contains="key_", page_size=10))
    page2 = await s.ListSecrets(
        pb.ListSecretsRequest(name_contains="key_", page_size=10, page_token=page1.next_page_token)
    )
    assert page2.secrets[0].name == "key_010"
    # a token used with another filter is refused
    await expect_error(
        s.ListSecrets(pb.ListSecretsRequest(name_contains="alp", page_token=page1.next_page_token)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )


async def test_list_page_size_rules(vault: VaultHandle) -> None:
    s = stub(vault)
    for i in range(60):
        await s.CreateSecret(pb.CreateSecretRequest(name=f"s{i:02d}", value="v"))
    default = await s.ListSecrets(pb.ListSecretsRequest())
    assert len(default.secrets) == 50 and default.next_page_token
    clamped = await s.ListSecrets(pb.ListSecretsRequest(page_size=5000))
    assert len(clamped.secrets) == 60 and clamped.next_page_token == ""
    await expect_error(
        s.ListSecrets(pb.ListSecretsRequest(page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_SIZE",
    )
    for bad in ("garbage", "!!!", "eyJ2IjoyfQ"):
        await expect_error(
            s.ListSecrets(pb.ListSecretsRequest(page_token=bad)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_TOKEN",
        )


async def test_concurrent_creates_exactly_one_wins(vault: VaultHandle) -> None:
    stubs = [stub(vault) for _ in range(8)]
    results = await asyncio.gather(
        *(
            st.CreateSecret(pb.CreateSecretRequest(name="race" if i % 2 else "RACE", value=f"v{i}"))
            for i, st in enumerate(stubs)
        ),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, pb.Secret)]
    losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(wins) == 1
    assert len(losses) == 7
    assert all(e.code() == grpc.StatusCode.ALREADY_EXISTS for e in losses)
    stats = await stubs[0].GetVaultStats(pb.GetVaultStatsRequest())
    assert stats.total_secrets == 1


async def test_concurrent_updates_with_same_etag_one_wins(vault: VaultHandle) -> None:
    s = stub(vault)
    created = await s.CreateSecret(pb.CreateSecretRequest(name="cas", value="v"))
    results = await asyncio.gather(
        *(
            stub(vault).UpdateSecret(
                pb.UpdateSecretRequest(name="cas", description=f"d{i}", etag=created.etag)
            )
            for i in range(6)
        ),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, pb.Secret)]
    assert len(wins) == 1
    assert all(
        isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.ABORTED
        for r in results
        if not isinstance(r, pb.Secret)
    )


async def test_no_value_field_in_any_secret_service_message() -> None:
    """The admin surface has nowhere to put a value on the way out."""
    for message in (pb.Secret, pb.ListSecretsResponse, pb.VaultStats):
        assert "value" not in message.DESCRIPTOR.fields_by_name


async def test_value_is_encrypted_at_rest(vault: VaultHandle) -> None:
    s = stub(vault)
    await s.CreateSecret(pb.CreateSecretRequest(name="enc", value="plain-text-canary-123"))
    rows = await vault.sql("SELECT * FROM secrets s JOIN secret_versions v ON v.secret_id = s.id")
    blob = repr([dict(r) for r in rows])
    assert "plain-text-canary-123" not in blob
    assert b"plain-text-canary-123" not in bytes(rows[0]["ciphertext"])
    assert rows[0]["kek_id"] == vault.settings.keyring.primary.key_id  # type: ignore[union-attr]
