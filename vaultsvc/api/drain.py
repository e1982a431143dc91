"""The drain gate: once a vault is stopping, new calls are refused with UNAVAILABLE.

grpc's own shutdown drops the calls it has accepted but not yet handed to the application
with CANCELLED, which clients do not retry. So before the grpc server is stopped, the gate
closes: every new call (health and reflection excepted) gets UNAVAILABLE at once, with the
usual ``ErrorInfo`` (reason ``UNAVAILABLE``) and a request id, while calls already running
finish within the grace period. Cheap refusals also keep the event loop from falling behind,
so hardly any call is still waiting inside grpc when the server stops.

It is the first interceptor of the server (see :func:`vaultsvc.server.start_server`); while
the gate is open it adds one attribute check per call.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from vaultsvc.api.status import status_for
from vaultsvc.auth import is_open_method
from vaultsvc.errors import Reason, Unavailable

_log = logging.getLogger("vaultsvc.server")

SHUTTING_DOWN_MESSAGE = "the vault is shutting down; retry (another instance will answer)"


class DrainGate(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses new calls with UNAVAILABLE once :meth:`close` is called."""

    def __init__(self) -> None:
        self.closed = False
        self.refused = 0
        self._last_refusal = 0.0

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._last_refusal = time.monotonic()
            _log.info("refusing new calls with UNAVAILABLE: the vault is shutting down")

    async def quiet(self, quiet: float, budget: float) -> bool:
        """Wait (at most ``budget`` seconds) until no call was refused for ``quiet``
        seconds: clients retrying with backoff have then moved on. True when it got quiet."""
        deadline = time.monotonic() + budget
        while True:
            now = time.monotonic()
            calm_at = self._last_refusal + quiet
            if calm_at <= now:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(min(calm_at, deadline) - now)

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        if not self.closed or handler is None or is_open_method(handler_call_details.method):
            return handler
        return self._refusal(handler)

    def _refusal(self, handler: Any) -> Any:
        """A handler of the same shape as ``handler`` that only refuses."""

        async def refuse(request: Any, context: Any) -> None:
            self.refused += 1
            self._last_refusal = time.monotonic()
            request_id = uuid.uuid4().hex
            status = status_for(
                Unavailable(SHUTTING_DOWN_MESSAGE, reason=Reason.UNAVAILABLE), request_id
            )
            await context.abort(
                status.code,
                status.details,
                (*status.trailing_metadata, ("x-request-id", request_id)),
            )

        if handler.unary_unary is not None:
            make = grpc.unary_unary_rpc_method_handler
        elif handler.unary_stream is not None:
            make = grpc.unary_stream_rpc_method_handler
        elif handler.stream_unary is not None:
            make = grpc.stream_unary_rpc_method_handler
        else:
            make = grpc.stream_stream_rpc_method_handler
        return make(
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
