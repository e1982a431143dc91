"""Deleting audit events past the retention, one bounded batch per transaction.

Every replica and worker process runs the retention job; a transaction-level advisory lock
(``pg_try_advisory_xact_lock``: it ends with its transaction, so it also works behind
pgbouncer in transaction mode, unlike a session lock) lets one of them delete at a time and
makes the others skip the round instead of waiting. Each batch is its own short
transaction, so a huge backlog never holds locks for long; the pool's ``statement_timeout``
and operation timeout bound every wait, and ``lock_timeout`` bounds a wait on a row lock.
"""

from __future__ import annotations

from datetime import datetime

from vaultsvc.storage.db import Database

#: Held (per transaction) by the process deleting old audit events.
AUDIT_RETENTION_LOCK_ID = 0x7661756C7461  # "vaulta"
LOCK_TIMEOUT_MS = 2000

_DELETE_SQL = """
    DELETE FROM audit_events
     WHERE id IN (SELECT id FROM audit_events
                   WHERE time < COALESCE($1::timestamptz, now()) - make_interval(days => $2)
                   ORDER BY time LIMIT $3)"""


async def delete_expired_audit_batch(
    db: Database, retention_days: int, batch_size: int, now: datetime | None = None
) -> int | None:
    """Delete at most ``batch_size`` of the oldest events older than ``retention_days``
    (before ``now``, None: the database's clock); how many, or None when another process
    holds the retention lock (it is doing the work)."""
    async with db.transaction() as conn:
        await conn.execute("SELECT set_config('lock_timeout', $1, true)", str(LOCK_TIMEOUT_MS))
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", AUDIT_RETENTION_LOCK_ID):
            return None
        status = await conn.execute(_DELETE_SQL, now, retention_days, batch_size)
    return int(status.rpartition(" ")[2])
