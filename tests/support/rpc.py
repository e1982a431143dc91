"""gRPC helpers: stubs per role, metadata, and decoding a failed call's status."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from interakt.vault.v1 import audit_service_pb2_grpc as apbg
from interakt.vault.v1 import config_service_pb2_grpc as cpbg
from interakt.vault.v1 import resolver_service_pb2_grpc as rpbg
from interakt.vault.v1 import secret_service_pb2_grpc as spbg

from tests.support.vault import VaultHandle

ERROR_DOMAIN = "vault.interakt"


def bearer(token: str) -> list[tuple[str, str]]:
    """Call metadata carrying ``token``."""
    return [("authorization", f"Bearer {token}")]


def resolver(vault: VaultHandle, role: str | None = "resolver") -> rpbg.ResolverServiceStub:
    return rpbg.ResolverServiceStub(vault.channel(role))


def secrets_admin(vault: VaultHandle) -> spbg.SecretServiceStub:
    return spbg.SecretServiceStub(vault.channel("admin"))


def configs_admin(vault: VaultHandle) -> cpbg.ConfigServiceStub:
    return cpbg.ConfigServiceStub(vault.channel("admin"))


def audit_admin(vault: VaultHandle) -> apbg.AuditServiceStub:
    return apbg.AuditServiceStub(vault.channel("admin"))


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The single ErrorInfo every vault error carries (asserted, with its domain)."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "every error carries a google.rpc.Status"
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1, status.details
    # Besides it, only a RetryInfo (shed load, rate limits) may ride along.
    others = [d for d in status.details if not d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert all(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in others), others
    info = error_details_pb2.ErrorInfo()
    assert infos[0].Unpack(info)
    assert info.domain == ERROR_DOMAIN
    return info


def retry_info(err: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo | None:
    """The RetryInfo detail of a failed call, if it carries one."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            return retry
    return None


async def expect_error(
    call: Any, code: grpc.StatusCode, reason: str | None = None
) -> tuple[str, error_details_pb2.ErrorInfo]:
    """Await a call that must fail; return its message and ErrorInfo."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    err = caught.value
    assert err.code() == code, (err.code(), err.details())
    info = error_info(err)
    if reason is not None:
        assert info.reason == reason, (info.reason, err.details())
    return str(err.details()), info
