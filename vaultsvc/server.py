"""Start and stop a vault: the grpc.aio server with its services, health, reflection and
graceful shutdown. What is checked before starting lives in :mod:`vaultsvc.bootstrap`; the
servicers and the interceptor in :mod:`vaultsvc.api`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
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

from vaultsvc.api.audit import AuditServicer
from vaultsvc.api.configs import ConfigServicer
from vaultsvc.api.interceptor import VaultInterceptor
from vaultsvc.api.resolver import ResolverServicer
from vaultsvc.api.secrets import SecretServicer
from vaultsvc.audit import AuditWriter
from vaultsvc.auth import TokenAuthenticator
from vaultsvc.bootstrap import (
    StartupError,
    check_transport,
    is_loopback,
    opened_database,
    prepare_database,
    server_credentials,
)
from vaultsvc.config import Settings
from vaultsvc.console.server import ConsoleServer, start_console
from vaultsvc.crypto import Envelope
from vaultsvc.limits import MAX_SEND_MESSAGE_BYTES
from vaultsvc.storage.db import Database
from vaultsvc.storage.repository import Repository
from vaultsvc.vault import Vault

_log = logging.getLogger("vaultsvc.server")

SERVICE_NAMES = (
    secret_service_pb2.DESCRIPTOR.services_by_name["SecretService"].full_name,
    config_service_pb2.DESCRIPTOR.services_by_name["ConfigService"].full_name,
    resolver_service_pb2.DESCRIPTOR.services_by_name["ResolverService"].full_name,
    audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)


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
    """The port actually bound (the one asked for, or the one the OS picked for port 0)."""
    resources: contextlib.AsyncExitStack
    """Closes the database (and stops an embedded Postgres) when the vault stops."""
    console: ConsoleServer | None = None
    """The admin console and JSON API (``console_listen``), in this process and loop."""

    @property
    def address(self) -> str:
        """``host:port`` as bound, e.g. ``127.0.0.1:50051``."""
        return f"{self.settings.listen.rpartition(':')[0]}:{self.port}"


async def start_server(settings: Settings) -> Runtime:
    keyring = settings.require_keyring()
    check_transport(settings)
    resources = contextlib.AsyncExitStack()
    db = await resources.enter_async_context(opened_database(settings))
    try:
        await prepare_database(db, keyring)
        repository = Repository(db)
        vault = Vault(repository, Envelope(keyring))
        audit = AuditWriter(
            repository,
            buffer_size=settings.audit_buffer_size,
            flush_interval=settings.audit_flush_interval,
        )
        authenticator = TokenAuthenticator(settings.tokens)
        interceptor = VaultInterceptor(authenticator, audit, settings)
        server = grpc.aio.server(
            interceptors=[interceptor],
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
                ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
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
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(vault), server)
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )

        host = settings.listen.rpartition(":")[0]
        credentials = server_credentials(settings)
        if credentials is None:
            if not is_loopback(host):  # allowed by check_transport: say it loudly
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
        console = await start_console(settings, db, vault, audit, authenticator)
        if console is not None:
            resources.push_async_callback(console.stop)
        audit.start()
        await server.start()
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        _log.info(
            "vault listening", extra={"listen": f"{host}:{port}", "tls": credentials is not None}
        )
        return Runtime(
            settings,
            db,
            repository,
            vault,
            audit,
            server,
            health_servicer,
            port,
            resources,
            console,
        )
    except BaseException:
        await resources.aclose()
        raise


async def stop_server(runtime: Runtime, grace: float | None = None) -> None:
    """Health NOT_SERVING first, then let in-flight RPCs finish within the grace period."""
    grace = runtime.settings.grace_period if grace is None else grace
    await runtime.health.enter_graceful_shutdown()
    # Give load balancers probing health a moment to see NOT_SERVING and stop routing.
    await asyncio.sleep(min(runtime.settings.shutdown_delay, grace))
    if runtime.console is not None:
        await runtime.console.stop()
    await runtime.server.stop(grace)
    await runtime.audit.stop()
    await runtime.resources.aclose()
    _log.info("vault stopped")
