"""Audit retention: events older than ``audit_retention_days`` are deleted, batch by batch,
by one process at a time (transaction-level advisory lock), and nothing newer is."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import timedelta

import asyncpg
import pytest

from tests.support.cli import REPO_ROOT
from tests.support.vault import VaultFactory, VaultHandle
from vaultsvc.audit import UNAUTHENTICATED_METHOD
from vaultsvc.storage.retention import AUDIT_RETENTION_LOCK_ID
from vaultsvc.vault.retention import AuditRetention

DAYS = 30


@pytest.fixture
async def vault(make_vault: VaultFactory) -> VaultHandle:
    """A vault whose own retention job is off (0 days: never started). These tests run
    the job themselves; the server's job runs a round as soon as it starts, and that round
    holding the lock at the wrong moment makes a test's own round skip (None, not a count)
    or its holder's try fail."""
    return await make_vault(audit_retention_days=0)


async def backdate(vault: VaultHandle, count: int, age: timedelta, prefix: str) -> None:
    """``count`` events ``age`` old (half of them aggregated unauthenticated refusals)."""
    await vault.sql(
        "INSERT INTO audit_events (time, principal, method, outcome, request_id, count) "
        "SELECT now() - $1::interval - make_interval(secs => i), 'p', "
        "CASE WHEN i % 2 = 0 THEN $3 ELSE '/interakt.vault.v1.SecretService/GetSecret' END, "
        "'OK', $2 || i, CASE WHEN i % 2 = 0 THEN 5 ELSE 1 END "
        "FROM generate_series(1, $4) AS i",
        age,
        prefix,
        UNAUTHENTICATED_METHOD,
        count,
    )


async def counts(vault: VaultHandle) -> dict[str, int]:
    rows = await vault.sql(
        "SELECT split_part(request_id, '-', 1) AS kind, count(*) AS n FROM audit_events "
        "WHERE request_id LIKE 'old-%' OR request_id LIKE 'new-%' OR request_id LIKE 'edge-%' "
        "GROUP BY 1"
    )
    return {r["kind"]: int(r["n"]) for r in rows}


async def test_deletes_only_events_past_the_retention(vault: VaultHandle) -> None:
    await backdate(vault, 250, timedelta(days=DAYS, hours=1), "old-")
    await backdate(vault, 40, timedelta(days=DAYS, hours=-1), "edge-")  # just inside
    await backdate(vault, 30, timedelta(minutes=5), "new-")
    retention = AuditRetention(vault.runtime.db, retention_days=DAYS, interval=3600, batch_size=60)
    assert await retention.run_once() == 250  # five batches
    assert await counts(vault) == {"edge": 40, "new": 30}
    assert await retention.run_once() == 0
    # 0 days means kept forever, not "everything is old"
    assert await AuditRetention(vault.runtime.db, retention_days=0, interval=1).run_once() == 0
    assert await counts(vault) == {"edge": 40, "new": 30}


async def test_a_process_holding_the_lock_makes_the_others_skip(vault: VaultHandle) -> None:
    await backdate(vault, 20, timedelta(days=DAYS + 2), "old-")
    retention = AuditRetention(vault.runtime.db, retention_days=DAYS, interval=3600)
    holder = await asyncpg.connect(vault.database_url, timeout=10)
    try:
        tx = holder.transaction()
        await tx.start()
        assert await holder.fetchval(
            "SELECT pg_try_advisory_xact_lock($1)", AUDIT_RETENTION_LOCK_ID
        )
        # Skipped at once (no waiting on the holder), nothing deleted.
        assert await asyncio.wait_for(retention.run_once(), timeout=5) is None
        assert await counts(vault) == {"old": 20}
        await tx.rollback()  # the lock ends with its transaction
    finally:
        await holder.close()
    assert await retention.run_once() == 20


_WORKER = """
import asyncio, json, sys
from vaultsvc.config import DatabaseSettings
from vaultsvc.storage.db import Database
from vaultsvc.vault.retention import AuditRetention

async def main():
    db = await Database.connect(sys.argv[1], DatabaseSettings(url=sys.argv[1]))
    job = AuditRetention(db, retention_days=int(sys.argv[2]), interval=1, batch_size=200)
    rounds = []
    try:
        for _ in range(40):
            rounds.append(await job.run_once())
            await asyncio.sleep(0.01)
    finally:
        await db.close()
    print(json.dumps(rounds))

asyncio.run(main())
"""


async def test_two_processes_run_the_job_at_once(vault: VaultHandle) -> None:
    await backdate(vault, 6000, timedelta(days=DAYS, minutes=1), "old-")
    await backdate(vault, 500, timedelta(days=DAYS, minutes=-30), "new-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER,
            vault.database_url,
            str(DAYS),
            cwd=REPO_ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)
    deleted = 0
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err, err.decode()
        rounds = json.loads(out)
        deleted += sum(n for n in rounds if n is not None)
    assert deleted == 6000  # each old event deleted exactly once, by one of them
    assert await counts(vault) == {"new": 500}


async def test_the_server_runs_the_job(make_vault: VaultFactory) -> None:
    vault = await make_vault(audit_retention_days=DAYS, audit_retention_interval=0.1)
    await backdate(vault, 30, timedelta(days=DAYS + 1), "old-")
    await backdate(vault, 10, timedelta(days=DAYS - 1), "new-")
    for _ in range(200):  # the job runs every 0.1 s: well within 20 s
        if "old" not in await counts(vault):
            break
        await asyncio.sleep(0.1)
    assert await counts(vault) == {"new": 10}
