"""One console request = one mirrored gRPC call: the same authorization table, the same
servicer, the same audit path and the same error table as the interceptor gives a gRPC call.

:meth:`CallRunner.invoke` is the HTTP twin of
:meth:`vaultsvc.api.interceptor.VaultInterceptor._handle`: it sets the per-call context the
servicers fill (with a server-assigned request id), checks ``authorize(method, principal)``,
refuses at once when the audit trail cannot take the event, admits the call through the
front door's queue and bounds it by ``rpc_timeout_cap``, stores the audit event the servicer
did not write itself exactly as gRPC calls do (:func:`vaultsvc.api.callflow.settle_audit`),
and turns any failure into a :class:`~vaultsvc.errors.VaultError` with a request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from vaultsvc.api.callflow import settle_audit, submit_quietly
from vaultsvc.api.frontdoor import FrontDoor
from vaultsvc.audit import AuditWriter, CallContext, current_call
from vaultsvc.auth import Principal, authorize
from vaultsvc.domain import safe_label
from vaultsvc.errors import (
    DeadlineExceeded,
    InternalError,
    Reason,
    VaultError,
)

_log = logging.getLogger("vaultsvc.console")
_access = logging.getLogger("vaultsvc.access")

T = TypeVar("T")

PACKAGE = "/interakt.vault.v1."
MAX_CLIENT_REQUEST_ID = 64


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
    def __init__(
        self, audit: AuditWriter, rpc_timeout_cap: float, frontdoor: FrontDoor | None = None
    ) -> None:
        self.audit = audit
        self.rpc_timeout_cap = rpc_timeout_cap
        self.frontdoor = frontdoor

    async def invoke(
        self,
        service_method: str,
        peer: str,
        authenticate: Callable[[], Awaitable[Principal]],
        handler: Callable[[], Awaitable[T]],
        *,
        client_request_id: str | None = None,
    ) -> tuple[T, str]:
        """Authenticate, authorize and run ``handler`` as the gRPC method it mirrors; its
        result and the call's request id.

        The server names the call (a fresh request id); ``client_request_id`` (the client's
        ``X-Request-Id``) is kept beside it in the audit event, as over gRPC."""
        method = full_method(service_method)
        started = time.monotonic()
        request_id = uuid.uuid4().hex
        call = CallContext(method=method, request_id=request_id, peer=peer)
        if client_request_id is not None:
            call.record.client_request_id = safe_label(client_request_id, MAX_CLIENT_REQUEST_ID)
        token = current_call.set(call)
        error: VaultError | None = None
        result: T | None = None
        try:
            principal = await authenticate()
            call.set_principal(principal.name, principal.role)
            authorize(method, principal)
            # Fail fast, before any work, when this call's event could not be committed.
            self.audit.ensure_accepting()
            deadline = started + self.rpc_timeout_cap
            try:
                async with contextlib.AsyncExitStack() as stack:
                    if self.frontdoor is not None:  # the same admission queue as gRPC calls
                        await stack.enter_async_context(self.frontdoor.admitted(deadline))
                    async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                        result = await handler()
            except TimeoutError:
                raise DeadlineExceeded(
                    "deadline exceeded", reason=Reason.DEADLINE_EXCEEDED
                ) from None
        except VaultError as exc:
            error = exc
        except asyncio.CancelledError:  # the client went away: no reply, the event still kept
            call.record.outcome = "CANCELLED"
            if not call.audited:
                submit_quietly(self.audit, call)
            raise
        except Exception as exc:
            _log.error(
                "unexpected error",
                extra={"request_id": request_id, "method": method, "error": type(exc).__name__},
            )
            error = InternalError(f"internal error (request id {request_id})")
        finally:
            current_call.reset(token)

        error = await settle_audit(self.audit, call, error)
        outcome = error.code.value if error is not None else "OK"
        _access.info(
            "http",
            extra={
                "method": method,
                "principal": call.principal,
                "outcome": outcome,
                "reason": error.reason.value if error else "",
                "request_id": request_id,
                "client_request_id": call.record.client_request_id,
                "peer": peer,
                "secret_names": call.record.secret_names,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
            },
        )
        if error is not None:
            raise CallFailed(error, request_id)
        return result, request_id  # type: ignore[return-value]
