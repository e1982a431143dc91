"""Audit retention: the background job that deletes audit events older than
``audit_retention_days``, safe to run in every replica and worker process at once (see
:mod:`vaultsvc.storage.retention` for the lock and the batches). Aggregated
unauthenticated-refusal events follow the same rule as every other event."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from vaultsvc.storage.db import Database
from vaultsvc.storage.retention import delete_expired_audit_batch
from vaultsvc.vault.jobs import PeriodicJob

_log = logging.getLogger("vaultsvc.retention")

BATCH_SIZE = 10_000
"""Rows deleted per statement (and transaction)."""


class AuditRetention:
    def __init__(
        self,
        db: Database,
        *,
        retention_days: int,
        interval: float,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.db = db
        self.retention_days = retention_days
        self.batch_size = batch_size
        self._job = PeriodicJob("audit retention", self.run_once, interval=interval, log=_log)

    async def run_once(self, now: datetime | None = None) -> int | None:
        """Delete every event past the retention, batch by batch; how many this process
        deleted, or None when another process held the lock at the first batch (its round).
        ``now`` (tests) stands for the database's clock."""
        if self.retention_days <= 0:  # 0: kept forever
            return 0
        deleted = 0
        while True:
            n = await delete_expired_audit_batch(self.db, self.retention_days, self.batch_size, now)
            if n is None:  # another process is at it: it will finish the round
                if deleted == 0:
                    return None
                break
            deleted += n
            if n < self.batch_size:
                break
            await asyncio.sleep(0)  # let calls in between batches
        if deleted:
            _log.info(
                "deleted audit events past the retention",
                extra={"count": deleted, "retention_days": self.retention_days},
            )
        return deleted

    def start(self) -> None:
        """Start the job (not when ``retention_days`` is 0: events are kept forever)."""
        if self.retention_days > 0:
            self._job.start()

    async def stop(self) -> None:
        await self._job.stop()
