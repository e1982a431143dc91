"""What the client's error mapping relies on, checked against the live vault.

Every failure carries one ErrorInfo (domain ``vault.interakt``, an UPPER_SNAKE
reason) so the typed exceptions are chosen by reason, not by guessing from text.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from vaultsvc_client import (
    AlreadyExists,
    AsyncVaultClient,
    EtagMismatch,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RetryPolicy,
    SecretNotFound,
    Unauthenticated,
    VaultError,
)

pytestmark = pytest.mark.timeout(120)

UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9_]*$")


def assert_rich(error: VaultError, reason: str | None = None) -> None:
    assert error.domain == "vault.interakt", error
    assert UPPER_SNAKE.match(error.reason), error
    if reason is not None:
        assert error.reason == reason, error


async def test_every_failure_carries_error_info(vault: Any) -> None:
    no_retry = RetryPolicy(max_attempts=1)
    admin = AsyncVaultClient(vault.address, vault.tokens["admin"], retry=no_retry)
    viewer = AsyncVaultClient(vault.address, vault.tokens["viewer"], retry=no_retry)
    anonymous = AsyncVaultClient(vault.address, retry=no_retry)
    stranger = AsyncVaultClient(vault.address, "unknown-token", retry=no_retry)
    try:
        created = await admin.create_secret("s_key", "value-1")
        checks: list[tuple[Any, type[VaultError], str | None]] = [
            (admin.get_secret("missing"), SecretNotFound, "SECRET_NOT_FOUND"),
            (admin.create_secret("S_KEY", "v"), AlreadyExists, "ALREADY_EXISTS"),
            (admin.update_secret("s_key", description="d", etag="stale"), EtagMismatch, None),
            (admin.delete_secret("s_key", etag="stale"), EtagMismatch, None),
            (admin.create_secret("1bad", "v"), InvalidArgument, None),
            (admin.create_secret("empty_value", ""), InvalidArgument, None),
            (admin.create_secret("big", "x" * (64 * 1024 + 1)), InvalidArgument, None),
            (admin.create_secret("long_d", "v", "d" * 1025), InvalidArgument, None),
            (admin.list_secrets(page_size=-1), InvalidArgument, None),
            (admin.get_config_value("nope"), NotFound, None),
            (viewer.create_secret("v_key", "v"), PermissionDenied, "PERMISSION_DENIED"),
            (admin.resolve_template({"a": "x"}), PermissionDenied, "PERMISSION_DENIED"),
            (anonymous.get_vault_stats(), Unauthenticated, "UNAUTHENTICATED"),
            (stranger.get_vault_stats(), Unauthenticated, "UNAUTHENTICATED"),
        ]
        for call, expected, reason in checks:
            with pytest.raises(expected) as caught:
                await call
            assert_rich(caught.value, reason)
        assert (await admin.get_secret("s_key")).etag == created.etag

        kept = await admin.update_secret("s_key", value="", description="still here")
        assert kept.etag != created.etag
        big_page = await admin.list_secrets(page_size=5000)
        assert [s.name for s in big_page.secrets] == ["s_key"]
    finally:
        for client in (admin, viewer, anonymous, stranger):
            await client.close()


async def test_fresh_vault_stats_have_no_last_update(vault: Any) -> None:
    async with AsyncVaultClient(vault.address, vault.tokens["viewer"]) as viewer:
        stats = await viewer.get_vault_stats()
    assert stats.total_secrets == 0
    assert not stats.HasField("last_update_time")
