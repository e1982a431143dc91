"""Status code + ErrorInfo.reason -> typed exception, through a real grpc.aio server."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
from google.rpc import status_pb2
from vaultsvc_client import (
    AlreadyExists,
    AsyncVaultClient,
    ConfigInUse,
    ConfigNotFound,
    DataLoss,
    DeadlineExceeded,
    EtagMismatch,
    FailedPrecondition,
    InternalError,
    InUse,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RetryPolicy,
    SecretInUse,
    SecretNotFound,
    Unauthenticated,
    Unavailable,
    VaultClient,
    VaultError,
)
from vaultsvc_client.errors import error_from_status

from tests.support.fake_vault import FakeVault, start_fake

NO_RETRY = RetryPolicy(max_attempts=1)
Code = grpc.StatusCode

CASES: list[tuple[grpc.StatusCode, str, type[VaultError]]] = [
    (Code.NOT_FOUND, "SECRET_NOT_FOUND", SecretNotFound),
    (Code.NOT_FOUND, "CONFIG_NOT_FOUND", ConfigNotFound),
    (Code.NOT_FOUND, "NOT_FOUND", NotFound),
    (Code.INVALID_ARGUMENT, "INPUT_MISSING", InvalidArgument),
    (Code.INVALID_ARGUMENT, "MALFORMED_PLACEHOLDER", InvalidArgument),
    (Code.INVALID_ARGUMENT, "PLACEHOLDER_NOT_ALLOWED", InvalidArgument),
    (Code.INVALID_ARGUMENT, "INVALID_TEMPLATE", InvalidArgument),
    (Code.INVALID_ARGUMENT, "INVALID_HEADER_VALUE", InvalidArgument),
    (Code.INVALID_ARGUMENT, "INVALID_ARGUMENT", InvalidArgument),
    (Code.ALREADY_EXISTS, "ALREADY_EXISTS", AlreadyExists),
    (Code.ABORTED, "ETAG_MISMATCH", EtagMismatch),
    (Code.PERMISSION_DENIED, "PERMISSION_DENIED", PermissionDenied),
    (Code.UNAUTHENTICATED, "UNAUTHENTICATED", Unauthenticated),
    (Code.UNAVAILABLE, "UNAVAILABLE", Unavailable),
    (Code.DATA_LOSS, "SECRET_UNREADABLE", DataLoss),
    (Code.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED", ResourceExhausted),
    (Code.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", DeadlineExceeded),
    (Code.INTERNAL, "INTERNAL", InternalError),
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeVault]:
    vault, server = await start_fake()
    yield vault
    await server.stop(None)


@pytest.mark.parametrize(("code", "reason", "expected"), CASES, ids=[c[1] for c in CASES])
async def test_async_client_maps_code_and_reason(
    fake: FakeVault, code: grpc.StatusCode, reason: str, expected: type[VaultError]
) -> None:
    fake.fail("GetSecret", code, f"{reason.lower()} happened", reason, {"request_id": "r-1"})
    async with AsyncVaultClient(fake.address, retry=NO_RETRY) as client:
        with pytest.raises(VaultError) as caught:
            await client.get_secret("stripe_key")
    error = caught.value
    assert type(error) is expected
    assert error.code == code
    assert error.reason == reason
    assert error.message == f"{reason.lower()} happened"
    assert error.metadata == {"request_id": "r-1"}
    assert error.request_id == "r-1"
    assert error.domain == "vault.interakt"


@pytest.mark.parametrize(("code", "reason", "expected"), CASES, ids=[c[1] for c in CASES])
async def test_sync_client_maps_code_and_reason(
    fake: FakeVault, code: grpc.StatusCode, reason: str, expected: type[VaultError]
) -> None:
    fake.fail("ListSecrets", code, "it failed", reason)

    def call() -> VaultError:
        with VaultClient(fake.address, retry=NO_RETRY) as client:
            try:
                client.list_secrets()
            except VaultError as exc:
                return exc
        raise AssertionError("expected a failure")

    error = await asyncio.to_thread(call)
    assert type(error) is expected
    assert (error.code, error.reason, error.message) == (code, reason, "it failed")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (Code.NOT_FOUND, NotFound),
        (Code.ABORTED, EtagMismatch),
        (Code.PERMISSION_DENIED, PermissionDenied),
        (Code.UNKNOWN, InternalError),
        (Code.FAILED_PRECONDITION, FailedPrecondition),
        (Code.UNIMPLEMENTED, VaultError),
    ],
)
async def test_status_without_error_info_maps_by_code(
    fake: FakeVault, code: grpc.StatusCode, expected: type[VaultError]
) -> None:
    async def plain_abort(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, "plain")

    fake.handlers["GetVaultStats"] = plain_abort
    async with AsyncVaultClient(fake.address, retry=NO_RETRY) as client:
        with pytest.raises(VaultError) as caught:
            await client.get_vault_stats()
    assert type(caught.value) is expected
    assert caught.value.reason == code.name
    assert caught.value.metadata == {}


async def test_inconsistent_status_trailer_falls_back_to_the_code(fake: FakeVault) -> None:
    bogus = status_pb2.Status(code=Code.ALREADY_EXISTS.value[0], message="other text")

    async def handler(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(
            Code.NOT_FOUND,
            "gone",
            trailing_metadata=(("grpc-status-details-bin", bogus.SerializeToString()),),
        )

    fake.handlers["GetSecret"] = handler
    async with AsyncVaultClient(fake.address, retry=NO_RETRY) as client:
        with pytest.raises(NotFound) as caught:
            await client.get_secret("x")
    assert caught.value.code == Code.NOT_FOUND
    assert caught.value.message == "gone"


async def test_secret_not_found_names_from_error_info_metadata(fake: FakeVault) -> None:
    fake.fail(
        "ResolveTemplate",
        Code.NOT_FOUND,
        "secret not found: a, b",
        "SECRET_NOT_FOUND",
        {"names": "stripe_key,orders-key"},
    )
    async with AsyncVaultClient(fake.address, retry=NO_RETRY) as client:
        with pytest.raises(SecretNotFound) as caught:
            await client.resolve_template({"url": "{{secret:stripe_key}}{{secret:orders-key}}"})
    assert caught.value.names == ["stripe_key", "orders-key"]


async def test_a_capped_name_list_reports_how_many_were_left_out(fake: FakeVault) -> None:
    listed = ",".join(f"s{i}" for i in range(20))
    fake.fail(
        "ResolveTemplate",
        Code.NOT_FOUND,
        "secret not found: s0, ... and 980 more",
        "SECRET_NOT_FOUND",
        {"names": f"{listed},and 980 more"},
    )
    async with AsyncVaultClient(fake.address, retry=NO_RETRY) as client:
        with pytest.raises(SecretNotFound) as caught:
            await client.resolve_template({"url": "x"})
    assert caught.value.names == [f"s{i}" for i in range(20)]
    assert caught.value.names_omitted == 980


async def test_names_never_come_from_the_message_text(fake: FakeVault) -> None:
    fake.fail("ResolveTemplate", Code.NOT_FOUND, "secret not found: a, b_2", "SECRET_NOT_FOUND")
    async with AsyncVaultClient(fake.address, retry=NO_RETRY) as client:
        with pytest.raises(SecretNotFound) as caught:
            await client.resolve_template({"url": "x"})
    assert caught.value.names == []
    assert isinstance(caught.value, NotFound)


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_a_single_name_call_reports_the_name_it_asked_for(
    fake: FakeVault, sync: bool
) -> None:
    fake.fail("GetSecret", Code.NOT_FOUND, "whatever the server says", "SECRET_NOT_FOUND")
    fake.fail("DeleteConfigValue", Code.NOT_FOUND, "text", "CONFIG_NOT_FOUND")
    fake.fail("UpdateSecret", Code.NOT_FOUND, "t", "SECRET_NOT_FOUND", {"names": "from_info"})

    def sync_calls() -> list[list[str]]:
        names = []
        with VaultClient(fake.address, retry=NO_RETRY) as client:
            for call in (
                lambda: client.get_secret("Stripe_Key"),
                lambda: client.delete_config_value("base_url"),
                lambda: client.update_secret("x", description="d"),
            ):
                with pytest.raises(NotFound) as caught:
                    call()
                names.append(caught.value.names)
        return names

    if sync:
        seen = await asyncio.to_thread(sync_calls)
    else:
        seen = []
        async with AsyncVaultClient(fake.address, retry=NO_RETRY) as client:
            for coroutine in (
                client.get_secret("Stripe_Key"),
                client.delete_config_value("base_url"),
                client.update_secret("x", description="d"),
            ):
                with pytest.raises(NotFound) as caught:
                    await coroutine
                seen.append(caught.value.names)
    assert seen == [["Stripe_Key"], ["base_url"], ["from_info"]]


def test_reason_picks_the_class_and_metadata_the_names() -> None:
    plain = error_from_status(
        Code.NOT_FOUND, "m", reason="SECRET_NOT_FOUND", metadata={"names": "only"}
    )
    assert isinstance(plain, SecretNotFound)
    assert plain.names == ["only"]
    config = error_from_status(
        Code.NOT_FOUND, "secret not found: x", reason="CONFIG_NOT_FOUND", metadata={"names": "a, b"}
    )
    assert isinstance(config, ConfigNotFound)
    assert config.names == ["a", "b"]
    # the message says "secret", the reason says neither: the reason decides
    other = error_from_status(Code.NOT_FOUND, "secret not found: s", reason="NOT_FOUND")
    assert type(other) is NotFound
    assert other.names == []


async def test_exception_never_carries_the_request_value(fake: FakeVault) -> None:
    value = "hunter2-this-is-the-secret-value"
    fake.fail("CreateSecret", Code.INVALID_ARGUMENT, "value is too long", "INVALID_ARGUMENT")
    fake.fail("UpdateSecret", Code.ABORTED, "etag mismatch for secret s", "ETAG_MISMATCH")
    fake.fail("PutConfigValue", Code.INVALID_ARGUMENT, "bad key", "INVALID_ARGUMENT")
    fake.fail("ResolveTemplate", Code.INVALID_ARGUMENT, "input missing: x", "INPUT_MISSING")
    caught: list[BaseException] = []
    async with AsyncVaultClient(fake.address, "admin-token", retry=NO_RETRY) as client:
        for call in (
            client.create_secret("s", value, "d"),
            client.update_secret("s", value=value, etag="e"),
            client.put_config_value("k", value),
            client.resolve_template({"f": value}, {"x": value}, tool=value),
        ):
            with pytest.raises(VaultError) as info:
                await call
            caught.append(info.value)

    def sync_failure() -> BaseException:
        with VaultClient(fake.address, "admin-token", retry=NO_RETRY) as client:
            try:
                client.create_secret("s", value)
            except VaultError as exc:
                return exc
        raise AssertionError("expected a failure")

    caught.append(await asyncio.to_thread(sync_failure))
    for error in caught:
        rendered = "".join(traceback.format_exception(error))
        for text in (str(error), repr(error), rendered, *map(str, error.args)):
            assert value not in text
            assert "admin-token" not in text


def test_str_and_repr_are_one_line_summaries() -> None:
    error = error_from_status(Code.NOT_FOUND, "secret not found: x", reason="SECRET_NOT_FOUND")
    assert str(error) == "NOT_FOUND (SECRET_NOT_FOUND): secret not found: x"
    plain = error_from_status(Code.NOT_FOUND, "missing")
    assert str(plain) == "NOT_FOUND: missing"
    assert repr(plain) == "NotFound(code=NOT_FOUND, reason='NOT_FOUND', message='missing')"


async def test_unreachable_server_is_unavailable() -> None:
    # A port nothing listens on: bind, learn the port, close.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with AsyncVaultClient(f"127.0.0.1:{port}", retry=NO_RETRY, timeout=5) as client:
        with pytest.raises(Unavailable):
            await client.get_vault_stats()


def test_in_use_errors_carry_the_tools_and_the_last_use() -> None:
    metadata = {
        "tools": "payments,invoices,and 3 more",
        "last_resolve_time": "2026-11-29T05:31:12.5Z",
    }
    for reason, kind in (("SECRET_IN_USE", SecretInUse), ("CONFIG_IN_USE", ConfigInUse)):
        error = error_from_status(
            Code.FAILED_PRECONDITION, "in use", reason=reason, metadata=metadata
        )
        assert type(error) is kind and isinstance(error, InUse)
        assert isinstance(error, FailedPrecondition)
        assert isinstance(error, InUse)
        assert error.tools == ["payments", "invoices"] and error.tools_omitted == 3
        assert error.last_resolve_time == datetime(2026, 11, 29, 5, 31, 12, 500000, tzinfo=UTC)
    bare = error_from_status(Code.FAILED_PRECONDITION, "in use", reason="SECRET_IN_USE")
    assert isinstance(bare, SecretInUse)
    assert bare.tools == [] and bare.last_resolve_time is None
    odd = error_from_status(
        Code.FAILED_PRECONDITION,
        "in use",
        reason="SECRET_IN_USE",
        metadata={"last_resolve_time": "yesterday"},
    )
    assert isinstance(odd, SecretInUse) and odd.last_resolve_time is None
