"""Faults a test inflicts on a Postgres it owns: freeze (SIGSTOP), thaw, kill -9 and
restart, read-only, and a tiny tablespace that fills up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg

from tests.support.vault import sql
from vaultsvc.storage.embedded import EmbeddedPostgres


def postmaster_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.pgdata / "postmaster.pid").read_text().splitlines()[0])


def child_pids(pid: int) -> list[int]:
    """Every process whose parent is ``pid`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def postgres_pids(pg: EmbeddedPostgres) -> list[int]:
    """The postmaster and every process it forked (backends, checkpointer, walwriter...)."""
    root = postmaster_pid(pg)
    return [root, *child_pids(root)]


def freeze(pg: EmbeddedPostgres) -> list[int]:
    """SIGSTOP the postmaster first (it forks no more), then all its children."""
    root = postmaster_pid(pg)
    os.kill(root, signal.SIGSTOP)
    pids = [root, *child_pids(root)]
    for pid in pids[1:]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    return pids


def thaw(pids: list[int]) -> None:
    for pid in reversed(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def frozen(pg: EmbeddedPostgres) -> Iterator[list[int]]:
    """Postgres is SIGSTOPped for the block, and always continued after it."""
    pids = freeze(pg)
    try:
        yield pids
    finally:
        thaw(pids)


def kill9(pg: EmbeddedPostgres) -> None:
    """kill -9 every Postgres process (as a crash or an OOM kill would)."""
    for pid in postgres_pids(pg):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _all_gone(pids: list[int]) -> bool:
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


def _mount_tmpfs(size: str) -> Path:
    mount = Path(tempfile.mkdtemp(prefix="vaultsvc-tiny-ts-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    return mount


def _unmount(mount: Path) -> None:
    subprocess.run(["umount", "-l", str(mount)], check=False)
    with contextlib.suppress(OSError):
        mount.rmdir()


async def kill9_and_restart(pg: EmbeddedPostgres) -> None:
    pids = postgres_pids(pg)
    kill9(pg)
    for _ in range(200):  # until every process is gone (shared memory released)
        if _all_gone(pids):
            break
        await asyncio.sleep(0.05)
    await asyncio.to_thread(pg.restart_server)


async def set_read_only(pg: EmbeddedPostgres, on: bool) -> None:
    """The whole server read-only (as a hot standby is), existing sessions included."""
    value = "on" if on else "off"
    await sql(pg.uri("postgres"), f"ALTER SYSTEM SET default_transaction_read_only = {value}")
    await sql(pg.uri("postgres"), "SELECT pg_reload_conf()")


def _pg_owner(pg: EmbeddedPostgres) -> tuple[int, int]:
    stat = pg.pgdata.stat()
    return stat.st_uid, stat.st_gid


@contextlib.asynccontextmanager
async def tiny_tablespace(
    pg: EmbeddedPostgres, database_url: str, size: str = "4m"
) -> AsyncIterator[str]:
    """A tmpfs of ``size`` mounted as a tablespace, with every table and index of the
    database at ``database_url`` moved into it. Yields the tablespace's name; unmounts after
    moving everything back."""
    mount = await asyncio.to_thread(_mount_tmpfs, size)
    name = f"tiny_{mount.name.rpartition('-')[2].lower()}"
    try:
        location = mount / "ts"
        location.mkdir(mode=0o700)
        os.chown(location, *_pg_owner(pg))
        await sql(pg.uri("postgres"), f"CREATE TABLESPACE {name} LOCATION '{location}'")
        await _move_all(database_url, "pg_default", name)
        try:
            yield name
        finally:
            with contextlib.suppress(asyncpg.PostgresError):
                await sql(database_url, "DROP TABLE IF EXISTS fault_filler")
            await _move_all(database_url, name, "pg_default")
            await sql(pg.uri("postgres"), f"DROP TABLESPACE {name}")
    finally:
        await asyncio.to_thread(_unmount, mount)


async def _move_all(database_url: str, source: str, target: str) -> None:
    """Move every table and index; under a live workload an ALTER can deadlock with the
    vault's transactions (either side may be the victim): retry ours a bounded number of
    times."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await conn.execute("SET lock_timeout = '2s'")
        for what in ("TABLE", "INDEX"):
            for attempt in range(20):
                try:
                    await conn.execute(
                        f"ALTER {what} ALL IN TABLESPACE {source} SET TABLESPACE {target}"
                    )
                    break
                except (asyncpg.DeadlockDetectedError, asyncpg.LockNotAvailableError):
                    if attempt == 19:
                        raise
                    await asyncio.sleep(0.1)
    finally:
        await conn.close(timeout=5)


async def fill_tablespace(database_url: str, tablespace: str) -> None:
    """Write into ``tablespace`` until Postgres reports disk full (SQLSTATE 53100)."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS fault_filler (x text) TABLESPACE {tablespace}"
        )
        await conn.execute("ALTER TABLE fault_filler ALTER COLUMN x SET STORAGE PLAIN")
        for _ in range(10_000):
            try:
                await conn.execute(
                    "INSERT INTO fault_filler SELECT repeat('x', 1800) FROM generate_series(1, 50)"
                )
            except asyncpg.DiskFullError:
                break
        else:
            raise AssertionError("the tablespace never filled up")
        # Smaller rows too, so no page anywhere keeps room for one more row.
        for size in (400, 100, 10):
            for _ in range(10_000):
                try:
                    await conn.execute("INSERT INTO fault_filler VALUES (repeat('x', $1))", size)
                except asyncpg.DiskFullError:
                    break
    finally:
        await conn.close(timeout=5)


async def free_tablespace(database_url: str) -> None:
    await sql(database_url, "DROP TABLE IF EXISTS fault_filler")
