"""Postgres misbehaves under a running vault: frozen, killed, read-only, full; and the
vault itself is killed during writes."""

from __future__ import annotations

import asyncio

from tests.faults.lab import Lab
from tests.support.faults import (
    fill_tablespace,
    free_tablespace,
    frozen,
    kill9_and_restart,
    set_read_only,
    tiny_tablespace,
)


async def sigstop_postgres(lab: Lab) -> None:
    """SIGSTOP every Postgres process for a while, then SIGCONT."""

    async def fault() -> None:
        await asyncio.sleep(lab.duration / 4)
        with frozen(lab.pg):
            await asyncio.sleep(lab.duration / 2)
        await asyncio.sleep(lab.duration / 4)

    await lab.workload(8, fault)
    await lab.check_nothing_lost()


async def kill9_postgres(lab: Lab) -> None:
    """kill -9 every Postgres process, restart it (crash recovery) a moment later."""

    async def fault() -> None:
        for _ in range(2):
            await asyncio.sleep(lab.duration / 4)
            await kill9_and_restart(lab.pg)
        await asyncio.sleep(lab.duration / 4)

    await lab.workload(8, fault)
    await lab.check_nothing_lost()


async def read_only_postgres(lab: Lab) -> None:
    """The server turns read-only (as a promoted-away primary / hot standby), then back."""

    async def fault() -> None:
        await asyncio.sleep(lab.duration / 4)
        await set_read_only(lab.pg, True)
        try:
            await asyncio.sleep(lab.duration / 2)
        finally:
            await set_read_only(lab.pg, False)
        await asyncio.sleep(lab.duration / 4)

    await lab.workload(8, fault)
    await lab.check_nothing_lost()


async def disk_full(lab: Lab) -> None:
    """The vault's tables live on a 4 MB filesystem that fills up, then space is freed."""

    async def fault() -> None:
        async with tiny_tablespace(lab.pg, lab.url) as tablespace:
            await asyncio.sleep(lab.duration / 4)
            await fill_tablespace(lab.url, tablespace)
            await asyncio.sleep(lab.duration / 2)
            await free_tablespace(lab.url)
            await asyncio.sleep(lab.duration / 4)

    await lab.workload(8, fault)
    await lab.check_nothing_lost()


async def kill9_vault(lab: Lab) -> None:
    """kill -9 the vault process during writes and resolves, start it again."""

    async def fault() -> None:
        for _ in range(2):
            await asyncio.sleep(lab.duration / 3)
            lab.kill9_vault()
            await lab.vault.proc.wait() if lab.vault else None
            await lab.start_vault()
        await asyncio.sleep(lab.duration / 3)

    await lab.workload(8, fault)
    await lab.check_nothing_lost()


EXPERIMENTS = [sigstop_postgres, kill9_postgres, read_only_postgres, disk_full, kill9_vault]
