"""The grpc.aio server: interceptor (request id, auth, audit, error mapping), start-up
checks, health, reflection and graceful shutdown."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from interakt.vault.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    config_service_pb2,
    config_service_pb2_grpc,
    resolver_service_pb2,
    resolver_service_pb2_grpc,
    secret_service_pb2,
    secret_service_pb2_grpc,
)

from vaultsvc.audit import AuditWriter, CallContext, current_call
from vaultsvc.auth import Principal, TokenAuthenticator, authorize, is_open_method
from vaultsvc.config import ConfigError, Settings
from vaultsvc.core import Vault
from vaultsvc.crypto import (
    NONCE_WARN_THRESHOLD,
    Envelope,
    Keyring,
    key_check_value,
    verify_key_check_value,
)
from vaultsvc.domain import safe_label
from vaultsvc.errors import (
    ERROR_DOMAIN,
    DeadlineExceeded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    VaultError,
)
from vaultsvc.service.resolver import AuditServicer, ResolverServicer
from vaultsvc.service.secrets import ConfigServicer, SecretServicer
from vaultsvc.storage.db import Database, migrate, schema_exists
from vaultsvc.storage.embedded import EmbeddedPostgres
from vaultsvc.storage.repository import Repository

_log = logging.getLogger("vaultsvc.server")
_access = logging.getLogger("vaultsvc.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

SERVICE_NAMES = (
    secret_service_pb2.DESCRIPTOR.services_by_name["SecretService"].full_name,
    config_service_pb2.DESCRIPTOR.services_by_name["ConfigService"].full_name,
    resolver_service_pb2.DESCRIPTOR.services_by_name["ResolverService"].full_name,
    audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)


class StartupError(RuntimeError):
    """The server refuses to start; the message says why and what to do."""


# ------------------------------------------------------------------------ errors


def _status_for(err: VaultError, request_id: str) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(
        reason=err.reason, domain=ERROR_DOMAIN, metadata={**err.metadata, "request_id": request_id}
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=err.code.value[0], message=err.message, details=[detail])
    return rpc_status.to_status(status)


class InternalError(VaultError):
    """What a client sees for any unexpected exception: a request id and nothing else."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


# ------------------------------------------------------------------- interceptor


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
            call.set_principal(principal.name, principal.role)
            authorize(method, principal)
            remaining = context.time_remaining()
            budget = (
                self.rpc_timeout_cap if remaining is None else min(remaining, self.rpc_timeout_cap)
            )
            try:
                async with asyncio.timeout(max(budget, 0.001)):
                    response = await inner(request, context)
            except TimeoutError:
                raise DeadlineExceeded("deadline exceeded", reason="DEADLINE_EXCEEDED") from None
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

        outcome = error.code.name if error is not None else "OK"
        if not call.audited:
            call.record.outcome = outcome
            _sanitize_names(call)
            try:
                await self.audit.write(call.record)
            except Unavailable as exc:
                error = exc
                outcome = exc.code.name
        self._log_access(call, outcome, error.reason if error else "", started)
        if error is not None:
            status = _status_for(error, request_id)
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


# ------------------------------------------------------------------ start-up


async def check_master_keys(db: Database, keyring: Keyring) -> list[str]:
    """Refuse a wrong or missing master key before anything is written.

    Returns warnings (for example a key close to its nonce budget).
    """
    warnings: list[str] = []
    async with db.connection() as conn:
        if not await schema_exists(conn):
            return warnings
    usage = await Repository(db).key_usage()
    for entry in usage:
        key = keyring.find(entry.key_id)
        if key is None:
            if entry.data_keys:
                raise StartupError(
                    f"master key {entry.key_id!r} still wraps {entry.data_keys} data key(s) but is "
                    "not configured. Add it back to VAULT_MASTER_KEYS (any position after the "
                    "primary) until `python -m vaultsvc keys rewrap` has moved every data key to "
                    "the primary."
                )
            continue
        if entry.check_value is not None and not verify_key_check_value(key, entry.check_value):
            raise StartupError(
                f"master key {entry.key_id!r} does not match the key this database was written "
                "with (key check value mismatch). Check VAULT_MASTER_KEYS: the key material for "
                f"id {entry.key_id!r} is wrong. Nothing was written."
            )
        if entry.wrap_count >= NONCE_WARN_THRESHOLD:
            warnings.append(
                f"master key {entry.key_id!r} has wrapped {entry.wrap_count} data keys, close to "
                "the AES-GCM random-nonce limit (2^32): generate a new primary key and rotate"
            )
    return warnings


@dataclass
class Runtime:
    """Everything a running vault owns, for tests and the CLI to reach."""

    settings: Settings
    db: Database
    repository: Repository
    vault: Vault
    audit: AuditWriter
    server: grpc.aio.Server
    health: Any
    port: int
    embedded: EmbeddedPostgres | None


async def open_database(settings: Settings) -> tuple[Database, EmbeddedPostgres | None]:
    embedded: EmbeddedPostgres | None = None
    url = settings.database.url
    if not url:
        embedded = EmbeddedPostgres(settings.data_dir)
        await asyncio.to_thread(embedded.start)
        url = embedded.uri()
    try:
        db = await Database.connect(url, settings.database)
    except Exception as exc:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise StartupError(f"cannot connect to the database: {type(exc).__name__}") from None
    return db, embedded


async def prepare_database(db: Database, keyring: Keyring) -> None:
    """Key checks (read-only), then migrations, then key registration."""
    for warning in await check_master_keys(db, keyring):
        _log.warning(warning)
    async with db.connection() as conn:
        await migrate(conn)
    mismatched = await Repository(db).register_master_keys(
        {key_id: key_check_value(keyring.get(key_id)) for key_id in keyring.ids}
    )
    if mismatched:
        raise StartupError(
            f"master key {mismatched[0]!r} does not match the key registered in this database "
            "by another process a moment ago (key check value mismatch). Check "
            f"VAULT_MASTER_KEYS: the key material for id {mismatched[0]!r} is wrong. "
            "No key was registered."
        )


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(settings: Settings) -> None:
    """Refuse, before anything is opened, transport settings that are unsafe or that would
    silently not do what they say."""
    tls = settings.tls
    if tls is None:
        if not _is_loopback(settings.listen.rpartition(":")[0]) and not (
            settings.allow_plaintext_non_loopback
        ):
            raise ConfigError(
                "refusing to listen in plaintext on non-loopback address "
                f"{settings.listen}: configure [tls] or set "
                "[server] allow_plaintext_non_loopback = true"
            )
        return
    if tls.require_client_cert and tls.client_ca_file is None:
        raise ConfigError(
            "[tls] require_client_cert needs client_ca_file (the CA that signs client certificates)"
        )
    if tls.client_principals and not tls.require_client_cert:
        # gRPC only asks for (and verifies) client certificates when they are required.
        raise ConfigError(
            "[[tls.client_principals]] need [tls] require_client_cert = true and client_ca_file: "
            "otherwise no client certificate is requested and the mapping would never apply"
        )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file {path}: {exc.strerror}") from None


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    tls = settings.tls
    if tls is None:
        return None
    key = _read(tls.key_file)
    cert = _read(tls.cert_file)
    ca = _read(tls.client_ca_file) if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=tls.require_client_cert
    )


async def start_server(settings: Settings) -> Runtime:
    keyring = settings.require_keyring()
    check_transport(settings)
    db, embedded = await open_database(settings)
    try:
        await prepare_database(db, keyring)
        repository = Repository(db)
        vault = Vault(repository, Envelope(keyring))
        audit = AuditWriter(
            repository,
            buffer_size=settings.audit_buffer_size,
            flush_interval=settings.audit_flush_interval,
        )
        interceptor = VaultInterceptor(TokenAuthenticator(settings.tokens), audit, settings)
        server = grpc.aio.server(
            interceptors=[interceptor],
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.keepalive_timeout_ms", 20_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_ping_strikes", 2),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.max_connection_idle_ms", 15 * 60_000),
            ],
        )
        secret_service_pb2_grpc.add_SecretServiceServicer_to_server(SecretServicer(vault), server)
        config_service_pb2_grpc.add_ConfigServiceServicer_to_server(ConfigServicer(vault), server)
        resolver_service_pb2_grpc.add_ResolverServiceServicer_to_server(
            ResolverServicer(vault, audit), server
        )
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(repository), server)
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )

        host = settings.listen.rpartition(":")[0]
        credentials = _server_credentials(settings)
        if credentials is None:
            if not _is_loopback(host):  # allowed by check_transport: say it loudly
                _log.warning(
                    "listening in PLAINTEXT on a non-loopback address: tokens and values cross "
                    "the network unencrypted",
                    extra={"listen": settings.listen},
                )
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
        if port == 0:
            raise StartupError(f"cannot listen on {settings.listen}")
        audit.start()
        await server.start()
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        _log.info(
            "vault listening", extra={"listen": f"{host}:{port}", "tls": credentials is not None}
        )
        return Runtime(
            settings, db, repository, vault, audit, server, health_servicer, port, embedded
        )
    except BaseException:
        await db.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise


async def stop_server(runtime: Runtime, grace: float | None = None) -> None:
    """Health NOT_SERVING first, then let in-flight RPCs finish within the grace period."""
    grace = runtime.settings.grace_period if grace is None else grace
    await runtime.health.enter_graceful_shutdown()
    # Give load balancers probing health a moment to see NOT_SERVING and stop routing.
    await asyncio.sleep(min(runtime.settings.shutdown_delay, grace))
    await runtime.server.stop(grace)
    await runtime.audit.stop()
    await runtime.db.close()
    if runtime.embedded is not None:
        await asyncio.to_thread(runtime.embedded.stop)
    _log.info("vault stopped")
