"""In-process vaults over a REAL embedded Postgres and a REAL grpc.aio server."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from vaultsvc.auth import ADMIN, RESOLVER, VIEWER, TokenEntry, hash_token, new_token
from vaultsvc.config import DatabaseSettings, Settings
from vaultsvc.crypto import generate_master_key, parse_master_keys
from vaultsvc.logs import JsonFormatter
from vaultsvc.server import Runtime, start_server, stop_server
from vaultsvc.storage.embedded import EmbeddedPostgres


class AuthInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds a bearer token (and any extra metadata) to every unary call of a channel."""

    def __init__(self, token: str | None, extra: list[tuple[str, str]] | None = None) -> None:
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.metadata += extra or []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = list(details.metadata or []) + self.metadata
        details = details._replace(metadata=metadata)
        return await continuation(details, request)


class LogCapture(logging.Handler):
    """Every log record of the process, formatted exactly as the server writes them.

    It lives for the whole session (the canary tests read all of it), so a test that
    looks for a line *it* caused reads from a :meth:`mark` taken before: an earlier
    test's line must neither satisfy nor fail it."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.buffer = io.StringIO()

    def emit(self, record: logging.LogRecord) -> None:
        self.buffer.write(self.format(record) + "\n")

    def mark(self) -> int:
        """Where the log ends now; pass it as ``since`` to read only what comes after."""
        return self.buffer.tell()

    def text(self, since: int = 0) -> str:
        return self.buffer.getvalue()[since:]

    def records(self, since: int = 0) -> list[dict[str, Any]]:
        """The lines from ``since`` on, parsed."""
        return [json.loads(line) for line in self.text(since).splitlines() if line]


def start_embedded(prefix: str) -> EmbeddedPostgres:
    """A started embedded Postgres in a fresh directory (outside pytest's 0700 tmp tree)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    pg = EmbeddedPostgres(base)
    pg.start()
    return pg


async def create_database(pg: EmbeddedPostgres) -> str:
    """A fresh, empty database on ``pg``; returns its URL."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(pg.uri("postgres"), timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return pg.uri(name)


async def sql(url: str, query: str, *args: Any) -> list[Any]:
    """Run one statement on its own connection and return its rows."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close(timeout=5)


@dataclass
class VaultHandle:
    runtime: Runtime
    tokens: dict[str, str]
    settings: Settings
    database_url: str
    master_keys: str
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The address the server actually bound (it listens on port 0)."""
        return self.runtime.address

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
            self.address, interceptors=[AuthInterceptor(chosen, metadata)]
        )
        self.channels.append(channel)
        return channel

    async def sql(self, query: str, *args: Any) -> list[Any]:
        """Run one statement; then wait until this vault has heard of every change it
        committed (so its resolve cache cannot serve what the statement replaced)."""
        rows = await sql(self.database_url, query, *args)
        await self.caught_up()
        return rows

    async def caught_up(self, timeout: float = 10.0) -> None:
        """Wait until this vault's change listener has received every committed change
        (returns at once when it is not listening: its cache is bypassed then)."""
        changes = self.runtime.changes
        if changes is None or not changes.listening:
            return
        rows = await sql(self.database_url, "SELECT change_seq FROM change_state WHERE id = 1")
        if not rows:
            return
        committed = int(rows[0]["change_seq"])
        deadline = time.monotonic() + timeout
        while changes.listening and changes.seen_seq < committed:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"vault heard of change {changes.seen_seq}, committed is {committed}"
                )
            await asyncio.sleep(0.002)

    async def close(self, grace: float = 0.5) -> None:
        for channel in self.channels:
            await channel.close(grace=None)
        await stop_server(self.runtime, grace=grace)


def make_settings(database_url: str, **overrides: Any) -> tuple[Settings, dict[str, str], str]:
    """Test settings on port 0 with a fresh master key and one token per role."""
    key_id, key = generate_master_key()
    master_keys = overrides.pop("master_keys", f"{key_id}:{key}")
    tokens = overrides.pop("tokens", None) or {r: new_token() for r in (ADMIN, VIEWER, RESOLVER)}
    # More principals besides the one per role: TokenEntry rows, or (principal, role, token)
    # triples.
    extra: tuple[TokenEntry | tuple[str, str, str], ...] = overrides.pop("extra_tokens", ())
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
        )
        + tuple(
            e if isinstance(e, TokenEntry) else TokenEntry(e[0], e[1], hash_token(e[2]))
            for e in extra
        ),
        log_level="DEBUG",
        grace_period=1.0,
        shutdown_delay=0.0,
    )
    return replace(settings, **overrides), tokens, master_keys


async def start_vault(database_url: str, **overrides: Any) -> VaultHandle:
    """Start a vault on ``database_url`` (see :func:`make_settings` for ``overrides``)."""
    settings, tokens, master_keys = make_settings(database_url, **overrides)
    runtime = await start_server(settings)
    return VaultHandle(
        runtime=runtime,
        tokens=tokens,
        settings=settings,
        database_url=database_url,
        master_keys=master_keys,
    )


@asynccontextmanager
async def vault_server(url: str, master_keys: str, **overrides: Any) -> AsyncIterator[VaultHandle]:
    """A vault a test starts and stops itself (a "replica" with its own keyring)."""
    handle = await start_vault(url, master_keys=master_keys, **overrides)
    try:
        yield handle
    finally:
        await handle.close()


VaultFactory = Callable[..., Awaitable[VaultHandle]]
