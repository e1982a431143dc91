"""Starting the embedded Postgres survives pg_ctl dying before it launched the server (a
SIGSEGV of pg_ctl was seen twice on a loaded machine): it runs once more, and only then."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

import asyncpg
import pytest

from vaultsvc.storage.embedded import EmbeddedPostgres, EmbeddedPostgresError, postgres_bin


def crashing_pg_ctl(crashes: int) -> tuple[Path, Path]:
    """A pg_ctl whose first ``crashes`` ``start`` runs kill themselves with SIGSEGV; else the
    real one. Returns (program, directory where it counts its ``start`` runs)."""
    where = Path(tempfile.mkdtemp(prefix="vaultsvc-fake-pg-ctl-"))
    where.chmod(0o777)  # Postgres may run as its own user when the tests run as root
    program = where / "pg_ctl"
    program.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do last="$arg"; done\n'
        'if [ "$last" = start ]; then\n'
        f'  n=$(ls "{where}" | grep -c "^run-")\n'
        f'  touch "{where}/run-$n"\n'
        f'  if [ "$n" -lt {crashes} ]; then kill -SEGV $$; fi\n'
        "fi\n"
        f'exec "{postgres_bin("pg_ctl")}" "$@"\n'
    )
    program.chmod(program.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | 0o444)
    return program, where


def runs(where: Path) -> int:
    return sum(1 for entry in os.listdir(where) if entry.startswith("run-"))


class FakePgCtl(EmbeddedPostgres):
    def __init__(self, data_dir: Path, pg_ctl: Path) -> None:
        super().__init__(data_dir)
        self._fake = pg_ctl

    def bin(self, program: str) -> Path:
        return self._fake if program == "pg_ctl" else super().bin(program)


async def test_pg_ctl_dying_before_the_server_starts_is_run_once_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    program, where = crashing_pg_ctl(crashes=1)
    pg = FakePgCtl(Path(tempfile.mkdtemp(prefix="vaultsvc-launch-")), program)
    try:
        with caplog.at_level(logging.WARNING, logger="vaultsvc"):
            await asyncio.to_thread(pg.start)
        assert runs(where) == 2
        assert "pg_ctl died before starting Postgres" in caplog.text
        conn = await asyncpg.connect(pg.uri("postgres"), timeout=10)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(pg.stop)
        shutil.rmtree(where, ignore_errors=True)


async def test_pg_ctl_dying_again_is_an_error_that_says_so() -> None:
    program, where = crashing_pg_ctl(crashes=2)
    pg = FakePgCtl(Path(tempfile.mkdtemp(prefix="vaultsvc-launch-")), program)
    try:
        with pytest.raises(EmbeddedPostgresError, match=r"pg_ctl exit -11"):
            await asyncio.to_thread(pg.start)
        assert runs(where) == 2
    finally:
        await asyncio.to_thread(pg.stop)
        shutil.rmtree(where, ignore_errors=True)
