"""The interceptor every vault RPC passes through: request id, authentication,
authorization, deadline, audit and error mapping."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from vaultsvc import telemetry
from vaultsvc.api.callflow import settle_audit, submit_quietly
from vaultsvc.api.drain import DrainGate
from vaultsvc.api.frontdoor import FrontDoor, receive_message, receive_timed_out
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
    VaultError,
)
from vaultsvc.logs import AccessLog

_log = logging.getLogger("vaultsvc.server")
_access = AccessLog(logging.getLogger("vaultsvc.access"), "rpc")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_CLIENT_REQUEST_ID = 64


def _client_id_echo(supplied: object) -> tuple[tuple[str, str], ...]:
    """The client's own ``x-request-id`` back as ``x-client-request-id``, when it is safe."""
    if isinstance(supplied, str) and _REQUEST_ID.match(supplied):
        return (("x-client-request-id", supplied),)
    return ()


Handler = Callable[[Any, Any], Awaitable[Any]]


def _request_id() -> str:
    """A fresh request id: 32 hex characters of 128 random bits (as ``uuid4().hex``
    looks, without building a UUID object per call)."""
    return os.urandom(16).hex()


def _loop_time(deadline: float) -> float:
    """A ``time.monotonic()`` deadline on the running loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


class VaultInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Request id, authentication, authorization, deadline, audit and error mapping.

    The last-resort handler turns every unexpected exception into INTERNAL carrying only
    a request id: grpc's default would put the exception text, which could hold a value,
    into the status.

    It is the server's only interceptor: the drain gate (:mod:`vaultsvc.api.drain`) is
    consulted here rather than stacked as a second one, so a call costs one interceptor hop
    and one wrapper coroutine.
    """

    def __init__(
        self,
        authenticator: TokenAuthenticator,
        audit: AuditWriter,
        settings: Settings,
        frontdoor: FrontDoor | None = None,
        drain: DrainGate | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.drain = drain or DrainGate()
        self.audit = audit
        self.frontdoor = frontdoor or FrontDoor(settings)
        self.rpc_timeout_cap = settings.rpc_timeout_cap
        self.cert_principals = {
            cp.subject_cn: Principal(cp.principal, cp.role)
            for cp in (settings.tls.client_principals if settings.tls else ())
        }
        self._wrapped: dict[str, tuple[Any, Any, bool]] = {}

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        # The wrapped handler is built once per registered method (only those get here;
        # an unknown method has no handler), not once per call.
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrap(method, handler)
        if self.drain.closed and cached[2]:
            return self.drain.refusal(cached[1])
        return cached[1]

    def _wrap(self, method: str, handler: Any) -> tuple[Any, Any, bool]:
        """(``handler``, what serves it, whether the drain gate counts and refuses it)."""
        if is_open_method(method):
            entry = (handler, self.frontdoor.open_method(method, handler), False)
        elif handler.unary_unary is None:
            entry = (handler, self._streaming_refused(method, handler), True)
        else:
            entry = (handler, self._checked(method, handler), True)
        self._wrapped[method] = entry
        return entry

    def _checked(self, method: str, handler: Any) -> Any:
        inner: Handler = handler.unary_unary

        # Served as client-streaming so the vault sees the call at its start (see frontdoor).
        async def behavior(requests: Any, context: Any) -> Any:
            return await self._handle(inner, method, requests, context)

        return grpc.stream_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _streaming_refused(self, method: str, handler: Any) -> Any:
        """Default deny for streaming methods: every vault RPC is unary, so a streaming one
        is refused (after authentication, and audited) rather than served unchecked."""

        async def refuse(request: Any, context: Any) -> None:
            raise PermissionDenied(f"streaming method {method} is not served")

        async def behavior(requests: Any, context: Any) -> None:
            await self._handle(refuse, method, requests, context)

        if handler.response_streaming:
            make = grpc.stream_stream_rpc_method_handler
        else:
            make = grpc.stream_unary_rpc_method_handler
        return make(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _principal(
        self, authorization: object, authorizations: int, context: Any
    ) -> Principal:
        if authorizations > 1:
            raise Unauthenticated(
                "more than one authorization header: send exactly one 'Bearer <token>'"
            )
        if authorization is None and self.cert_principals:
            auth_ctx = context.auth_context() or {}
            for cn in auth_ctx.get("x509_common_name", []):
                principal = self.cert_principals.get(cn.decode("utf-8", "replace"))
                if principal is not None:
                    return principal
        if not isinstance(authorization, str | None):  # binary (-bin) metadata
            raise Unauthenticated("malformed authorization metadata (expected 'Bearer <token>')")
        return await self.authenticator.authenticate_call(authorization)

    async def _handle(self, inner: Handler, method: str, requests: Any, context: Any) -> Any:
        # An admitted call holds its slot until its reply is decided, audit commit included:
        # that wait is part of what the process serves (vaultsvc.api.frontdoor). The slot is
        # taken and given back by hand (no context-manager objects per call).
        granted: float | None = None
        started = time.monotonic()
        self.drain.track(context)  # served until grpc reports the call done
        # One pass over the metadata: the last value of a key wins, as in a dict.
        authorization: object = None
        authorizations = 0
        supplied_id: object = None
        pairs = context.invocation_metadata() or ()
        for key, value in pairs:
            if key == "authorization":
                authorization = value
                authorizations += 1
            elif key == "x-request-id":
                supplied_id = value
        # The server names every call; what the client sent is kept beside it, so one
        # client cannot make its call look like another in the audit trail.
        request_id = _request_id()
        call = CallContext(method=method, request_id=request_id, peer=context.peer() or "")
        if isinstance(supplied_id, str):
            call.record.client_request_id = safe_label(supplied_id, _MAX_CLIENT_REQUEST_ID)
        token = current_call.set(call)
        telemetry.rpc_start(method, pairs)
        error: VaultError | None = None
        response: Any = None
        try:
            try:
                principal = await self._principal(authorization, authorizations, context)
                call.set_principal(principal.name, principal.role, principal.scopes)
                authorize(method, principal)
                # Fail fast, before any work, when this call's event could not be committed.
                self.audit.ensure_accepting()
                remaining = context.time_remaining()
                budget = (
                    self.rpc_timeout_cap
                    if remaining is None
                    else min(remaining, self.rpc_timeout_cap)
                )
                deadline = started + budget
                self.frontdoor.precheck(deadline)  # shed before reading the message
                # ONE timer per call: the message's arrival, then the call's deadline.
                receiving = True
                try:
                    async with asyncio.timeout_at(
                        _loop_time(min(deadline, self.frontdoor.receive_deadline(started)))
                    ) as timer:
                        request = await receive_message(requests)
                        receiving = False
                        timer.reschedule(_loop_time(deadline))
                        granted = await self.frontdoor.admit(deadline)
                        response = await inner(request, context)
                except TimeoutError:
                    if receiving:
                        raise receive_timed_out() from None
                    raise DeadlineExceeded(
                        "deadline exceeded", reason=Reason.DEADLINE_EXCEEDED
                    ) from None
            except VaultError as exc:
                error = exc
            except asyncio.CancelledError:
                call.record.outcome = "CANCELLED"
                if not call.audited:
                    submit_quietly(self.audit, call)
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

            error = await settle_audit(self.audit, call, error)
            outcome = error.code.value if error is not None else "OK"
            self._log_access(call, outcome, error.reason.value if error else "", started)
            reply_metadata = (("x-request-id", request_id), *_client_id_echo(supplied_id))
            if error is not None:
                status = status_for(error, request_id)
                await context.abort(
                    status.code, status.details, (*status.trailing_metadata, *reply_metadata)
                )
            context.set_trailing_metadata(reply_metadata)
            return response
        finally:
            if granted is not None:
                self.frontdoor.dismiss(granted)

    @staticmethod
    def _log_access(call: CallContext, outcome: str, reason: str, started: float) -> None:
        telemetry.rpc_done(call, outcome, started)
        if not _access.enabled():
            return
        _access.write(
            time.time(),
            {
                "method": call.method,
                "principal": call.principal,
                "outcome": outcome,
                "reason": reason,
                "request_id": call.request_id,
                "client_request_id": call.record.client_request_id,
                "peer": call.peer,
                "secret_names": call.record.secret_names,
                "tool": call.record.tool,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
            },
        )
