"""Start and stop a vault: the grpc.aio server with its services, health, reflection and
graceful shutdown. What is checked before starting lives in :mod:`vaultsvc.bootstrap`; the
servicers and the interceptor in :mod:`vaultsvc.api`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from interakt.vault.v1 import (
    access_service_pb2,
    access_service_pb2_grpc,
    audit_service_pb2,
    audit_service_pb2_grpc,
    config_service_pb2,
    config_service_pb2_grpc,
    resolver_service_pb2,
    resolver_service_pb2_grpc,
    secret_service_pb2,
    secret_service_pb2_grpc,
)

from vaultsvc import telemetry
from vaultsvc.api.access import AccessServicer
from vaultsvc.api.audit import AuditServicer
from vaultsvc.api.configs import ConfigServicer
from vaultsvc.api.drain import DrainGate, disconnect, stop_listening
from vaultsvc.api.frontdoor import FrontDoor
from vaultsvc.api.health import VaultHealth
from vaultsvc.api.interceptor import VaultInterceptor
from vaultsvc.api.reflection import enable_reflection
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
from vaultsvc.ports import ensure_free
from vaultsvc.ratelimit import MissingNamesLimiter
from vaultsvc.storage.audit_store import AuditStore
from vaultsvc.storage.db import Database
from vaultsvc.storage.notify import ChangeListener
from vaultsvc.storage.repository import Repository
from vaultsvc.storage.tokens import TokenTable
from vaultsvc.telemetry import MetricsEndpoint
from vaultsvc.vault import Lifecycle, Vault
from vaultsvc.vault.cache import SealedRowCache
from vaultsvc.vault.purge import Purger
from vaultsvc.vault.retention import AuditRetention
from vaultsvc.vault.tokens import AccessTokens, ChangeRouter, TokenCache
from vaultsvc.vault.usage_fold import UsageFolder

_log = logging.getLogger("vaultsvc.server")

SERVICE_NAMES = (
    secret_service_pb2.DESCRIPTOR.services_by_name["SecretService"].full_name,
    config_service_pb2.DESCRIPTOR.services_by_name["ConfigService"].full_name,
    resolver_service_pb2.DESCRIPTOR.services_by_name["ResolverService"].full_name,
    audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    access_service_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name,
)


DRAIN_QUIET_SECONDS = 0.25
DRAIN_MAX_SECONDS = 1.0
"""After health NOT_SERVING and ``shutdown_delay``, new calls are refused with UNAVAILABLE
until none arrived for ``DRAIN_QUIET_SECONDS`` (at most ``DRAIN_MAX_SECONDS``, and at most
half the grace left); the calls being served finish within the grace period; then the
clients' connections are closed and grpc's server stops (see :mod:`vaultsvc.api.drain`)."""
STOP_MARGIN = 0.5
"""Seconds of the grace period kept for grpc's own stop after the calls being served."""


class GenericHandlersOnly:
    """Registers services with a grpc.aio server as generic handlers only.

    The generated ``add_*Servicer_to_server`` functions also register every method with
    grpc-core (``add_registered_method_handlers``). grpc.aio then keeps one pending
    request-call per registered method and waits on all of them (``asyncio.wait``) for
    every call it accepts: with the vault's ~30 methods, O(methods) work per call, about
    6.5% of a worker's instructions per warm resolve (callgrind, 1 worker, c16: 2.41-2.43 M
    before, 2.26-2.29 M after, 3 runs each). The registered path's other gain, the request
    message read with the call, does not apply: every vault method is served
    client-streaming (api/frontdoor.py). A generic handler finds a method with one dict
    lookup per service."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        """Not registered with grpc-core: the generic handler added alongside serves them."""


@dataclass
class Runtime:
    """Everything a running vault owns, for tests and the CLI to reach."""

    settings: Settings
    db: Database
    repository: Repository
    vault: Vault
    audit: AuditWriter
    server: grpc.aio.Server
    health: VaultHealth
    port: int
    """The port actually bound (the one asked for, or the one the OS picked for port 0)."""
    resources: contextlib.AsyncExitStack
    """Closes the database (and stops an embedded Postgres) when the vault stops."""
    frontdoor: FrontDoor
    """Budgets, admission queue and refusal counters (:mod:`vaultsvc.api.frontdoor`)."""
    purger: Purger
    """Background purge of expired deleted secrets (every replica runs one)."""
    changes: ChangeListener | None = None
    """Keeps ``vault.cache`` and the database-token cache coherent (None when the cache
    is off: database tokens are then looked up on every call)."""
    drain: DrainGate = field(default_factory=DrainGate)
    """Closed by :func:`stop_server`: new calls get UNAVAILABLE instead of CANCELLED."""
    console: ConsoleServer | None = None
    """The admin console and JSON API (``console_listen``), in this process and loop."""
    retention: AuditRetention | None = None
    """Deletes audit events past ``audit_retention_days`` (one process at a time)."""
    tokens: AccessTokens | None = None
    """Database tokens (AccessService) and this process's cache of them."""
    metrics: MetricsEndpoint | None = None
    """``/metrics`` (``metrics_listen``; a supervisor's worker only records)."""

    @property
    def address(self) -> str:
        """``host:port`` as bound, e.g. ``127.0.0.1:50051``."""
        return f"{self.settings.listen.rpartition(':')[0]}:{self.port}"


async def start_server(settings: Settings, *, shared_port: bool = False) -> Runtime:
    """Start a vault on ``settings.listen``.

    ``shared_port``: a worker of :mod:`vaultsvc.supervisor`, which claimed the port (see
    :mod:`vaultsvc.ports`); it binds with ``SO_REUSEPORT`` next to its sibling workers and
    does not log the ready line (the supervisor does, once). Otherwise the port must be
    free: it is bound without ``SO_REUSEPORT``, and a taken port raises :class:`PortInUse`.
    """
    keyring = settings.require_keyring()
    check_transport(settings)
    if not shared_port:
        ensure_free(settings.listen)  # before the database: a taken port fails fast
    resources = contextlib.AsyncExitStack()
    db = await resources.enter_async_context(opened_database(settings))
    try:
        metrics = telemetry.start(settings, resources)
        await prepare_database(db, keyring)
        repository = Repository(db)
        cache = SealedRowCache(
            max_entries=settings.cache_max_entries,
            max_bytes=settings.cache_max_bytes,
            negative_max_entries=settings.cache_negative_max_entries,
            enabled=settings.cache_enabled,
        )
        vault = Vault(repository, Envelope(keyring), cache, Lifecycle.from_settings(settings))
        purger = Purger(vault, interval=settings.purge_interval)
        retention = AuditRetention(
            db,
            retention_days=settings.audit_retention_days,
            interval=settings.audit_retention_interval,
        )
        tokens = AccessTokens(TokenTable(db), TokenCache(settings.token_cache_max_entries))
        changes = None
        # Without a listener (cache off) database tokens are looked up on every call.
        if settings.cache_enabled and db.url is not None:
            changes = ChangeListener(
                db.direct_url,
                ChangeRouter(cache, tokens.cache),
                check_interval=settings.cache_check_interval,
                connect_timeout=settings.database.connect_timeout,
            )
            await changes.start()
            resources.push_async_callback(changes.stop)
        audit = AuditWriter(
            AuditStore(
                db.url,
                connect_timeout=settings.database.connect_timeout,
                write_timeout=settings.audit_write_timeout,
                behind_pooler=db.behind_pooler,
            ),
            queue_size=settings.audit_buffer_size,
            write_timeout=settings.audit_write_timeout,
            stall_threshold=settings.audit_stall_threshold,
            database_down=db.breaker.is_open,
        )
        frontdoor = FrontDoor(settings)
        drain = DrainGate()
        authenticator = TokenAuthenticator(settings.tokens, tokens)
        interceptor = VaultInterceptor(
            authenticator, audit, settings, frontdoor=frontdoor, drain=drain
        )
        # No grpc-wide maximum_concurrent_rpcs: it counts calls before any token is checked,
        # health included; the front door's budgets bound each kind of call instead.
        server = grpc.aio.server(
            interceptors=[interceptor],
            options=[
                ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
                ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
                *frontdoor.channel_options(),
                # Only a supervisor's workers share a port (vaultsvc.ports).
                ("grpc.so_reuseport", 1 if shared_port else 0),
            ],
        )
        # Duck-typed: the generated add_*_to_server functions call only its two methods.
        services = cast(grpc.aio.Server, GenericHandlersOnly(server))
        secret_service_pb2_grpc.add_SecretServiceServicer_to_server(SecretServicer(vault), services)
        config_service_pb2_grpc.add_ConfigServiceServicer_to_server(ConfigServicer(vault), services)
        resolver_service_pb2_grpc.add_ResolverServiceServicer_to_server(
            ResolverServicer(
                vault,
                MissingNamesLimiter(settings.missing_names_rate, settings.missing_names_burst),
                replies=frontdoor.replies,
            ),
            services,
        )
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(vault), services)
        access_service_pb2_grpc.add_AccessServiceServicer_to_server(
            AccessServicer(tokens), services
        )
        health_servicer = VaultHealth(db, settings.health_db_grace)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
        enable_reflection((*SERVICE_NAMES, health.SERVICE_NAME), services)

        host = settings.listen.rpartition(":")[0]
        credentials = server_credentials(settings)
        if credentials is None and not is_loopback(host):  # allowed by check_transport
            _log.warning(
                "listening in PLAINTEXT on a non-loopback address: tokens and values cross "
                "the network unencrypted",
                extra={"listen": settings.listen},
            )
        try:
            if credentials is None:
                port = server.add_insecure_port(settings.listen)
            else:
                port = server.add_secure_port(settings.listen, credentials)
        except RuntimeError:  # grpc: "Failed to bind to address ..."
            port = 0
        if port == 0:
            if not shared_port:  # ensure_free saw it free: taken since, or not bindable
                ensure_free(settings.listen)
            raise StartupError(f"cannot listen on {settings.listen}")
        # After the gRPC port is bound; a worker joins the console port its supervisor claimed.
        console = await start_console(
            settings, db, vault, audit, authenticator, frontdoor=frontdoor, reuseport=shared_port
        )
        if console is not None:
            resources.push_async_callback(console.stop)
        audit.start()
        await server.start()
        await health_servicer.start(SERVICE_NAMES)
        purger.start()
        retention.start()
        folder = UsageFolder(db)  # pending usage into the usage tables (storage/usage.py)
        folder.start()
        resources.push_async_callback(folder.stop)
        await telemetry.watch(resources, db, vault, audit)
        _log.info(
            "worker listening" if shared_port else "vault listening",
            extra={
                "listen": f"{host}:{port}",
                "tls": credentials is not None,
                "metrics": None if metrics is None else metrics.address,
            },
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
            frontdoor,
            purger,
            changes,
            drain,
            console,
            retention,
            tokens,
            metrics,
        )
    except BaseException:
        await resources.aclose()
        raise


async def stop_server(runtime: Runtime, grace: float | None = None) -> None:
    """Health NOT_SERVING first, then let in-flight RPCs finish within the grace period."""
    grace = runtime.settings.grace_period if grace is None else grace
    started = time.monotonic()
    await runtime.health.enter_graceful_shutdown()
    # Give load balancers probing health a moment to see NOT_SERVING and stop routing;
    # calls still arriving meanwhile are served as usual.
    await asyncio.sleep(min(runtime.settings.shutdown_delay, grace))
    await runtime.purger.stop()
    if runtime.retention is not None:
        await runtime.retention.stop()
    # Then refuse new calls with UNAVAILABLE (retryable), and let the calls being served
    # finish and their replies leave.
    runtime.drain.close()
    if runtime.console is not None:
        # The console's own graceful shutdown (uvicorn) lets its in-flight requests finish.
        await runtime.console.stop()
    left = max(grace - (time.monotonic() - started), 0)
    await runtime.drain.quiet(DRAIN_QUIET_SECONDS, min(DRAIN_MAX_SECONDS, left / 2))
    left = max(grace - (time.monotonic() - started), 0)
    if not await runtime.drain.settled(left - STOP_MARGIN):
        _log.warning(
            "calls still running at the end of the grace period are cancelled",
            extra={"calls": runtime.drain.serving},
        )
    # grpc's shutdown would answer the calls it holds but has not handed over yet with
    # CANCELLED; closing the connections first fails them with UNAVAILABLE instead, and
    # nothing may run between the two (a client could reconnect and send more).
    # First no new connections (a client would reconnect at once and send more), then
    # the open ones close.
    stop_listening(runtime.port)
    closed = disconnect(runtime.port)
    await runtime.server.stop(max(grace - (time.monotonic() - started), 0))
    _log.debug("connections closed before grpc's stop", extra={"connections": closed})
    await runtime.health.stop()
    await runtime.audit.stop()
    await runtime.resources.aclose()
    _log.info("vault stopped")
