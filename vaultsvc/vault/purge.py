"""The background job every replica runs: purge secrets whose recovery window has ended,
and fingerprint versions written before fingerprints existed.

Both steps claim rows with ``FOR UPDATE SKIP LOCKED`` in small batches, so any number of
replicas may run the job at once without waiting on each other or doing a row twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from vaultsvc.domain import AuditRecord
from vaultsvc.names import name_key
from vaultsvc.vault import Vault
from vaultsvc.vault.cache import SECRET_KIND
from vaultsvc.vault.jobs import PeriodicJob

_log = logging.getLogger("vaultsvc.purge")

PURGE_PRINCIPAL = "vaultsvc"
PURGE_METHOD = "vaultsvc/PurgeDeletedSecrets"

Clock = Callable[[], datetime | None]
"""What "now" is for the purge: None = the database's ``now()``; tests move time with it."""


def database_clock() -> datetime | None:
    return None


class Purger:
    def __init__(
        self,
        vault: Vault,
        *,
        interval: float,
        clock: Clock = database_clock,
        batch_size: int = 100,
    ) -> None:
        self.vault = vault
        self.interval = interval
        self.clock = clock
        self.batch_size = batch_size
        self._job = PeriodicJob("purge", self.run_once, interval=interval, log=_log)

    async def purge_expired(self) -> list[str]:
        """Purge every secret past its purge time now; the names purged by this caller."""
        purged: list[str] = []
        while True:
            audit = AuditRecord(
                principal=PURGE_PRINCIPAL,
                method=PURGE_METHOD,
                request_id=uuid.uuid4().hex,
                peer="",
            )
            batch = await self.vault.repo.purge_expired(self.clock(), self.batch_size, audit)
            for name in batch:  # this replica reads its own purge at once
                self.vault.cache.invalidate(SECRET_KIND, name_key(name))
            purged.extend(batch)
            if len(batch) < self.batch_size:
                break
        if purged:
            _log.info("purged deleted secrets", extra={"secret_names": purged})
        return purged

    async def backfill_fingerprints(self) -> int:
        done = 0
        while True:
            n = await self.vault.repo.fingerprint_batch(self.vault.fingerprint_row, self.batch_size)
            done += n
            if n < self.batch_size:
                return done

    async def run_once(self) -> None:
        await self.purge_expired()
        await self.backfill_fingerprints()

    def start(self) -> None:
        self._job.start()

    async def stop(self) -> None:
        await self._job.stop()
