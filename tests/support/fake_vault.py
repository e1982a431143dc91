"""A real grpc.aio server with scripted RPCs, shared by the client unit tests.

Not a mock of the vault: the clients talk real gRPC to it, and errors travel as
real ``google.rpc.Status`` trailers built with ``grpc_status.rpc_status``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from interakt.vault.v1 import (
    access_service_pb2_grpc,
    audit_service_pb2_grpc,
    config_service_pb2_grpc,
    resolver_service_pb2_grpc,
    secret_service_pb2_grpc,
)

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


@dataclass
class RecordedCall:
    method: str
    request: Any
    metadata: dict[str, str]
    time_remaining: float | None


@dataclass
class FakeVault:
    """Every RPC records its call, then runs ``handlers[method]`` (UNIMPLEMENTED if none)."""

    address: str = ""
    handlers: dict[str, Handler] = field(default_factory=dict)
    calls: list[RecordedCall] = field(default_factory=list)

    def __getattr__(self, name: str) -> Handler:
        if not name[:1].isupper():
            raise AttributeError(name)

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self.calls.append(
                RecordedCall(
                    name,
                    request,
                    {k: v for k, v in context.invocation_metadata() or ()},
                    context.time_remaining(),
                ),
            )
            handler = self.handlers.get(name)
            if handler is None:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} not scripted")
            return await handler(request, context)  # type: ignore[misc]

        return handle

    def calls_to(self, method: str) -> list[RecordedCall]:
        return [call for call in self.calls if call.method == method]

    def reply(self, method: str, response: Any) -> None:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return response

        self.handlers[method] = handler

    def fail(
        self,
        method: str,
        code: grpc.StatusCode,
        message: str,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await abort(context, code, message, reason, metadata)

        self.handlers[method] = handler


async def abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    reason: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> NoReturn:
    """Ends the call the way vaultsvc does: a google.rpc.Status with one ErrorInfo."""
    status = status_pb2.Status(code=code.value[0], message=message)
    if reason is not None:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.ErrorInfo(
                reason=reason, domain="vault.interakt", metadata=dict(metadata or {})
            )
        )
        status.details.append(detail)
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable")


async def start_fake(
    server_credentials: grpc.ServerCredentials | None = None,
) -> tuple[FakeVault, grpc.aio.Server]:
    fake = FakeVault()
    server = grpc.aio.server()
    secret_service_pb2_grpc.add_SecretServiceServicer_to_server(fake, server)
    config_service_pb2_grpc.add_ConfigServiceServicer_to_server(fake, server)
    resolver_service_pb2_grpc.add_ResolverServiceServicer_to_server(fake, server)
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(fake, server)
    access_service_pb2_grpc.add_AccessServiceServicer_to_server(fake, server)
    if server_credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", server_credentials)
    await server.start()
    fake.address = f"127.0.0.1:{port}"
    return fake, server
