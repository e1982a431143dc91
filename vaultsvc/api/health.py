"""``grpc.health.v1.Health`` as shared/API.md "Health" defines it.

- Service ``""`` = readiness: SERVING while the database answers; NOT_SERVING once it has
  been unreachable for ``health_db_grace`` seconds (a background probe, so no check ever
  waits on the database), and while draining. The vault's own services follow it.
- Service ``"liveness"`` = the process is alive and its event loop answers (the check is
  served on that loop); it never depends on the database and stays SERVING while draining,
  so a liveness probe never kills a replica that is only waiting for its database.
- ``List`` (missing from grpcio-health-checking's asyncio servicer) returns every status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from grpc_health.v1 import health, health_pb2

from vaultsvc.storage.db import Database

_log = logging.getLogger("vaultsvc.health")

LIVENESS = "liveness"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class VaultHealth(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    def __init__(self, db: Database, grace: float) -> None:
        super().__init__()
        self.db = db
        self.grace = grace
        self.interval = min(1.0, grace / 4)
        self.probe_timeout = min(2.0, max(0.5, grace))
        self.unreachable_since: float | None = None
        self._ready_services: tuple[str, ...] = ("",)
        self._task: asyncio.Task[None] | None = None

    async def start(self, services: Iterable[str]) -> None:
        """Everything SERVING, and the database probe running."""
        self._ready_services = ("", *services)
        for name in (*self._ready_services, LIVENESS):
            await self.set(name, SERVING)
        self._task = asyncio.create_task(self._probe_forever(), name="health-db-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def List(self, request: Any, context: Any) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._server_status.items()
            }
        )

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        await self._set(LIVENESS, SERVING)  # draining is not dying

    async def _database_answers(self) -> bool:
        try:
            async with asyncio.timeout(self.probe_timeout):
                async with self.db.pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
        except Exception:
            return False
        return True

    async def probe_once(self) -> None:
        now = time.monotonic()
        if await self._database_answers():
            if self.unreachable_since is not None:
                _log.info("database reachable again: ready")
                await self._set_ready(SERVING)
            self.unreachable_since = None
            return
        if self.unreachable_since is None:
            self.unreachable_since = now
        elif now - self.unreachable_since >= self.grace and self._server_status[""] == SERVING:
            _log.error(
                "database unreachable: not ready",
                extra={"unreachable_for": round(now - self.unreachable_since, 1)},
            )
            await self._set_ready(NOT_SERVING)

    async def _set_ready(self, status: int) -> None:
        for name in self._ready_services:
            await self.set(name, status)

    async def _probe_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.probe_once()
            except Exception:
                _log.exception("health probe failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
