"""The one way a replica runs a background job every so often (purge, audit retention).

A round that fails is logged and retried at the next interval; nothing a job raises ever
reaches the server. Stopping cancels the round in flight: each job's database work is
transactional, so a cancelled round leaves nothing half-done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from vaultsvc.errors import VaultError


class PeriodicJob:
    """Run ``round`` now and then every ``interval`` seconds until :meth:`stop`."""

    def __init__(
        self,
        name: str,
        round: Callable[[], Awaitable[object]],
        *,
        interval: float,
        log: logging.Logger,
    ) -> None:
        self.name = name
        self.interval = interval
        self._round = round
        self._log = log
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"vaultsvc-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self._round()
            except VaultError as exc:
                self._log.warning(
                    f"{self.name} run failed; retrying later", extra={"reason": exc.reason}
                )
            except Exception as exc:
                self._log.error(f"{self.name} run failed", extra={"error": type(exc).__name__})
            await asyncio.sleep(self.interval)
