"""CreateSecret with a ``request_id`` (issue 15, item 12): a retry after an ambiguous
failure returns the first result instead of ALREADY_EXISTS."""

from __future__ import annotations

import uuid

import grpc
from interakt.vault.v1 import secret_service_pb2 as spb
from vaultsvc_client.aio import AsyncVaultClient

from tests.support.rpc import expect_error, secrets_admin
from tests.support.vault import VaultHandle


async def test_a_retry_with_the_same_request_id_returns_the_first_result(
    vault: VaultHandle,
) -> None:
    admin = secrets_admin(vault)
    request_id = str(uuid.uuid4())
    first = await admin.CreateSecret(
        spb.CreateSecretRequest(name="Stripe", value="sk_1", request_id=request_id), timeout=10
    )
    again = await admin.CreateSecret(
        spb.CreateSecretRequest(name="Stripe", value="sk_1", request_id=request_id), timeout=10
    )
    assert again == first
    # Without the id (or with another one) it is a second create: ALREADY_EXISTS.
    await expect_error(
        admin.CreateSecret(spb.CreateSecretRequest(name="Stripe", value="sk_1"), timeout=10),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    await expect_error(
        admin.CreateSecret(
            spb.CreateSecretRequest(name="Stripe", value="sk_1", request_id=str(uuid.uuid4())),
            timeout=10,
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    # The same id for another secret is a client bug, refused.
    message, _ = await expect_error(
        admin.CreateSecret(
            spb.CreateSecretRequest(name="other", value="v", request_id=request_id), timeout=10
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "REQUEST_ID_REUSED",
    )
    assert "Stripe" in message and "sk_1" not in message
    # Nothing is remembered but the id, the secret and the reply's metadata: never the value.
    rows = await vault.sql("SELECT * FROM create_requests")
    assert len(rows) == 1
    assert "sk_1" not in repr([dict(r) for r in rows])


async def test_a_request_id_must_be_a_uuid(vault: VaultHandle) -> None:
    _, info = await expect_error(
        secrets_admin(vault).CreateSecret(
            spb.CreateSecretRequest(name="s", value="v", request_id="retry-1"), timeout=10
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert info.metadata["field"] == "request_id"


async def test_the_client_sends_a_request_id_so_its_retries_are_safe(
    vault: VaultHandle,
) -> None:
    async with AsyncVaultClient(vault.address, token=vault.tokens["admin"]) as client:
        created = await client.create_secret("from_client", "v1")
        assert created.name == "from_client"
    rows = await vault.sql("SELECT request_id FROM create_requests")
    assert len(rows) == 1
    uuid.UUID(str(rows[0]["request_id"]))


async def test_a_retry_replays_the_whole_first_reply_allowed_hosts_included(
    vault: VaultHandle,
) -> None:
    admin = secrets_admin(vault)
    request = spb.CreateSecretRequest(
        name="bound",
        value="sk_2",
        description="bound to its API",
        allowed_hosts=["api.stripe.com", "*.Stripe.com"],
        request_id=str(uuid.uuid4()),
    )
    first = await admin.CreateSecret(request, timeout=10)
    assert sorted(first.allowed_hosts) == ["*.stripe.com", "api.stripe.com"]
    again = await admin.CreateSecret(request, timeout=10)
    assert again == first
