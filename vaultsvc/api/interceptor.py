"""The interceptor every vault RPC passes through: request id, authentication,
authorization, deadline, audit and error mapping."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from vaultsvc.api.status import status_for
from vaultsvc.audit import AuditWriter, CallContext, current_call
from vaultsvc.auth import Principal, TokenAuthenticator, authorize, is_open_method
from vaultsvc.config import Settings
from vaultsvc.domain import safe_label
from vaultsvc.errors import (
    DeadlineExceeded,
    InternalError,
    PermissionDenied,
    Reason,
    Unauthenticated,
    Unavailable,
    VaultError,
)

_log = logging.getLogger("vaultsvc.server")
_access = logging.getLogger("vaultsvc.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


Handler = Callable[[Any, Any], Awaitable[Any]]


def _sanitize_names(call: CallContext) -> None:
    """Names a handler recorded before validating them may hold control characters."""
    call.record.secret_names = [safe_label(n, 128) for n in call.record.secret_names]


class VaultInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Request id, authentication, authorization, deadline, audit and error mapping.

    The last-resort handler turns every unexpected exception into INTERNAL carrying only
    a request id: grpc's default would put the exception text, which could hold a value,
    into the status.
    """

    def __init__(
        self,
        authenticator: TokenAuthenticator,
        audit: AuditWriter,
        settings: Settings,
    ) -> None:
        self.authenticator = authenticator
        self.audit = audit
        self.rpc_timeout_cap = settings.rpc_timeout_cap
        self.cert_principals = {
            cp.subject_cn: Principal(cp.principal, cp.role)
            for cp in (settings.tls.client_principals if settings.tls else ())
        }

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or is_open_method(method):
            return handler
        if handler.unary_unary is None:
            return self._streaming_refused(method, handler)
        inner: Handler = handler.unary_unary

        async def behavior(request: Any, context: Any) -> Any:
            return await self._handle(inner, method, request, context)

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _streaming_refused(self, method: str, handler: Any) -> Any:
        """Default deny for streaming methods: every vault RPC is unary, so a streaming one
        is refused (after authentication, and audited) rather than served unchecked."""

        async def refuse(request: Any, context: Any) -> None:
            raise PermissionDenied(f"streaming method {method} is not served")

        async def behavior(request: Any, context: Any) -> None:
            await self._handle(refuse, method, request, context)

        if handler.unary_stream is not None:
            make = grpc.unary_stream_rpc_method_handler
        elif handler.stream_unary is not None:
            make = grpc.stream_unary_rpc_method_handler
        else:
            make = grpc.stream_stream_rpc_method_handler
        return make(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _principal(self, metadata: dict[str, Any], context: Any) -> Principal:
        authorization = metadata.get("authorization")
        if authorization is None and self.cert_principals:
            auth_ctx = context.auth_context() or {}
            for cn in auth_ctx.get("x509_common_name", []):
                principal = self.cert_principals.get(cn.decode("utf-8", "replace"))
                if principal is not None:
                    return principal
        if isinstance(authorization, bytes):
            raise Unauthenticated("malformed authorization metadata (expected 'Bearer <token>')")
        return self.authenticator.authenticate(authorization)

    async def _handle(self, inner: Handler, method: str, request: Any, context: Any) -> Any:
        started = time.monotonic()
        metadata = dict(context.invocation_metadata() or ())
        supplied_id = metadata.get("x-request-id")
        request_id = (
            supplied_id
            if isinstance(supplied_id, str) and _REQUEST_ID.match(supplied_id)
            else uuid.uuid4().hex
        )
        call = CallContext(method=method, request_id=request_id, peer=context.peer() or "")
        token = current_call.set(call)
        error: VaultError | None = None
        response: Any = None
        try:
            principal = self._principal(metadata, context)
            call.set_principal(principal.name, principal.role, principal.scopes)
            authorize(method, principal)
            remaining = context.time_remaining()
            budget = (
                self.rpc_timeout_cap if remaining is None else min(remaining, self.rpc_timeout_cap)
            )
            try:
                async with asyncio.timeout(max(budget, 0.001)):
                    response = await inner(request, context)
            except TimeoutError:
                raise DeadlineExceeded(
                    "deadline exceeded", reason=Reason.DEADLINE_EXCEEDED
                ) from None
        except VaultError as exc:
            error = exc
        except asyncio.CancelledError:
            call.record.outcome = "CANCELLED"
            if not call.audited:
                self._enqueue_quietly(call)
            self._log_access(call, "CANCELLED", "", started)
            raise
        except Exception as exc:
            _log.error(
                "unexpected error",
                extra={
                    "request_id": request_id,
                    "method": method,
                    "error": type(exc).__name__,
                },
            )
            error = InternalError(f"internal error (request id {request_id})")
        finally:
            current_call.reset(token)

        outcome = error.code.value if error is not None else "OK"
        if not call.audited:
            call.record.outcome = outcome
            _sanitize_names(call)
            try:
                await self.audit.write(call.record)
            except Unavailable as exc:
                error = exc
                outcome = exc.code.value
        self._log_access(call, outcome, error.reason.value if error else "", started)
        if error is not None:
            status = status_for(error, request_id)
            await context.abort(
                status.code,
                status.details,
                (*status.trailing_metadata, ("x-request-id", request_id)),
            )
        context.set_trailing_metadata((("x-request-id", request_id),))
        return response

    def _enqueue_quietly(self, call: CallContext) -> None:
        _sanitize_names(call)
        try:
            self.audit.enqueue(call.record)
        except Unavailable:
            _log.error(
                "audit event for a cancelled call could not be buffered",
                extra={"request_id": call.request_id},
            )

    @staticmethod
    def _log_access(call: CallContext, outcome: str, reason: str, started: float) -> None:
        _access.info(
            "rpc",
            extra={
                "method": call.method,
                "principal": call.principal,
                "outcome": outcome,
                "reason": reason,
                "request_id": call.request_id,
                "peer": call.peer,
                "secret_names": call.record.secret_names,
                "tool": call.record.tool,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
            },
        )
