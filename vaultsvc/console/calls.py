"""One console request = one mirrored gRPC call: the same authorization table, the same
servicer, the same audit path and the same error table as the interceptor gives a gRPC call.

:meth:`CallRunner.invoke` is the HTTP twin of
:meth:`vaultsvc.api.interceptor.VaultInterceptor._handle`: it sets the per-call context the
servicers fill, checks ``authorize(method, principal)``, bounds the call by
``rpc_timeout_cap``, writes the audit event the servicer did not write itself, and turns
any failure into a :class:`~vaultsvc.errors.VaultError` with a request id.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from vaultsvc.audit import AuditWriter, CallContext, current_call
from vaultsvc.auth import Principal, authorize
from vaultsvc.domain import safe_label
from vaultsvc.errors import (
    DeadlineExceeded,
    InternalError,
    Reason,
    Unavailable,
    VaultError,
)

_log = logging.getLogger("vaultsvc.console")
_access = logging.getLogger("vaultsvc.access")

T = TypeVar("T")

PACKAGE = "/interakt.vault.v1."


class CallFailed(Exception):
    """A mirrored call failed with ``error``; ``request_id`` names it in the audit trail."""

    def __init__(self, error: VaultError, request_id: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.request_id = request_id


def full_method(service_method: str) -> str:
    """``SecretService/CreateSecret`` -> ``/interakt.vault.v1.SecretService/CreateSecret``."""
    return PACKAGE + service_method


class CallRunner:
    def __init__(self, audit: AuditWriter, rpc_timeout_cap: float) -> None:
        self.audit = audit
        self.rpc_timeout_cap = rpc_timeout_cap

    async def invoke(
        self,
        service_method: str,
        peer: str,
        authenticate: Callable[[], Awaitable[Principal]],
        handler: Callable[[], Awaitable[T]],
    ) -> T:
        """Authenticate, authorize and run ``handler`` as the gRPC method it mirrors."""
        method = full_method(service_method)
        started = time.monotonic()
        request_id = uuid.uuid4().hex
        call = CallContext(method=method, request_id=request_id, peer=peer)
        token = current_call.set(call)
        error: VaultError | None = None
        result: T | None = None
        try:
            principal = await authenticate()
            call.set_principal(principal.name, principal.role)
            authorize(method, principal)
            try:
                async with asyncio.timeout(self.rpc_timeout_cap):
                    result = await handler()
            except TimeoutError:
                raise DeadlineExceeded(
                    "deadline exceeded", reason=Reason.DEADLINE_EXCEEDED
                ) from None
        except VaultError as exc:
            error = exc
        except Exception as exc:
            _log.error(
                "unexpected error",
                extra={"request_id": request_id, "method": method, "error": type(exc).__name__},
            )
            error = InternalError(f"internal error (request id {request_id})")
        finally:
            current_call.reset(token)

        outcome = error.code.value if error is not None else "OK"
        if not call.audited:
            call.record.outcome = outcome
            call.record.secret_names = [safe_label(n, 128) for n in call.record.secret_names]
            try:
                await self.audit.write(call.record)
            except Unavailable as exc:
                error = exc
                outcome = exc.code.value
        _access.info(
            "http",
            extra={
                "method": method,
                "principal": call.principal,
                "outcome": outcome,
                "reason": error.reason.value if error else "",
                "request_id": request_id,
                "peer": peer,
                "secret_names": call.record.secret_names,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
            },
        )
        if error is not None:
            raise CallFailed(error, request_id)
        return result  # type: ignore[return-value]
