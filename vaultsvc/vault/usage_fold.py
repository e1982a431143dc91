"""The usage fold: the background job that moves the usage audit batches append to
``usage_pending`` into the usage tables (see :mod:`vaultsvc.storage.usage`).

Every replica and worker process runs it about once a second; a transaction-level advisory
lock lets one of them fold at a time (the others skip the round), and it works behind a
transaction pooler like the audit retention does. Each batch of at most
:data:`~vaultsvc.storage.usage.FOLD_BATCH` rows is its own short transaction, and one
round folds at most :data:`MAX_BATCHES_PER_ROUND` batches, then lets the next round (of
any process) go on. Reads of usage fold for themselves, so they never wait for this job.

If folding stops (the fold fails round after round), ``usage_pending`` grows by the
batches written meanwhile: each failed round is logged by the job, and a round that finds
a backlog logs how many rows it folded until the backlog is gone.
"""

from __future__ import annotations

import asyncio
import logging

from vaultsvc.storage.db import Database
from vaultsvc.storage.usage import FOLD_BATCH, fold_batch
from vaultsvc.vault.jobs import PeriodicJob

_log = logging.getLogger("vaultsvc.usage")

FOLD_INTERVAL = 1.0
"""Seconds between rounds: how stale the usage tables may be for anything reading them
without folding first (the API's reads fold first)."""

MAX_BATCHES_PER_ROUND = 20


class UsageFolder:
    def __init__(
        self, db: Database, *, interval: float = FOLD_INTERVAL, batch_size: int = FOLD_BATCH
    ) -> None:
        self.db = db
        self.batch_size = batch_size
        self._job = PeriodicJob("usage fold", self.run_once, interval=interval, log=_log)

    async def run_once(self) -> int | None:
        """One round: how many pending rows this process folded, or None when another
        process held the fold lock at the first batch."""
        folded = 0
        behind = False
        for batch in range(MAX_BATCHES_PER_ROUND):
            n = await fold_batch(self.db, only_one=True, limit=self.batch_size)
            if n is None:  # another process is folding
                return None if batch == 0 else folded
            folded += n
            behind = n == self.batch_size
            if not behind:
                break
            await asyncio.sleep(0)  # let calls in between batches
        if folded >= self.batch_size:
            _log.warning(
                "usage fold: folded a backlog of pending usage",
                extra={"count": folded, "more_left": behind},
            )
        return folded

    def start(self) -> None:
        self._job.start()

    async def stop(self) -> None:
        await self._job.stop()
