"""The audit trail's own connection: group-committed batches are written here, never
through the main pool, so a slow ``secrets`` query or an exhausted pool cannot starve
them. Every wait is bounded by the write timeout (server-side ``statement_timeout`` and a
client-side bound that drops the connection); any failure is UNAVAILABLE
``AUDIT_UNAVAILABLE`` with the Postgres error class logged, never its text.

Behind a transaction pooler (``behind_pooler``) the connection carries no startup
parameter but ``application_name`` and no prepared statement: each batch is its own
transaction, its ``statement_timeout`` set by ``SET LOCAL``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg

from vaultsvc.domain import AuditRecord
from vaultsvc.storage.errors import audit_refusal
from vaultsvc.storage.repository import AUDIT_PARAMS, INSERT_AUDIT_SQL, audit_columns
from vaultsvc.storage.usage import UsageBatch, audit_statement

_log = logging.getLogger("vaultsvc.audit")
_WITH_USAGE_SQL = audit_statement(INSERT_AUDIT_SQL, AUDIT_PARAMS)


class AuditStore:
    """One dedicated connection, opened lazily and replaced after any failure."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        write_timeout: float,
        behind_pooler: bool = False,
    ) -> None:
        self._url = url
        self._behind_pooler = behind_pooler
        self._connect_timeout = min(connect_timeout, write_timeout)
        self._write_timeout = write_timeout
        self._conn: Any = None
        self.statements = 0
        """INSERT statements committed (one per group commit)."""
        self.events = 0
        """Events those statements committed."""

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            server_settings = {"application_name": "vaultsvc-audit"}
            if not self._behind_pooler:
                server_settings["statement_timeout"] = str(self._timeout_ms)
            self._conn = await asyncpg.connect(
                self._url,
                timeout=self._connect_timeout,
                statement_cache_size=0 if self._behind_pooler else 100,
                server_settings=server_settings,
            )
        return self._conn

    @property
    def _timeout_ms(self) -> int:
        return max(int(self._write_timeout * 1000), 1)

    async def _write(self, conn: Any, records: Sequence[AuditRecord]) -> None:
        # The events and the usage of the resolves among them, appended to usage_pending:
        # one statement, one transaction, no shared row touched (storage/usage.py).
        usage = UsageBatch.of(records)
        if usage:
            sql, args = _WITH_USAGE_SQL, (*audit_columns(records), *usage.parameters())
        else:
            sql, args = INSERT_AUDIT_SQL, tuple(audit_columns(records))
        if not self._behind_pooler:
            await conn.execute(sql, *args)
            return
        # SET LOCAL only lasts for a transaction: the pooler hands the server connection on.
        async with conn.transaction():
            await conn.execute(f"SET LOCAL statement_timeout = {self._timeout_ms}")
            await conn.execute(sql, *args)

    async def insert(self, records: Sequence[AuditRecord]) -> None:
        """Commit ``records`` in ONE statement (its own transaction, durable on return),
        with the usage their successful resolves add (one pending row per distinct item
        and tool, folded into the usage tables later: storage/usage.py)."""
        try:
            # The statement_timeout bounds a blocked INSERT; this bounds a frozen server
            # (where even the cancel request would hang) and the connect.
            async with asyncio.timeout(self._write_timeout + 0.5):
                conn = await self._connection()
                await self._write(conn, records)
        except asyncio.CancelledError:
            self._drop()
            raise
        except Exception as exc:
            if not isinstance(exc, asyncpg.PostgresError) or isinstance(
                exc, asyncpg.QueryCanceledError
            ):
                self._drop()
            _log.error(
                "audit events cannot be written",
                extra={
                    "error": type(exc).__name__,
                    "sqlstate": getattr(exc, "sqlstate", ""),
                    "events": len(records),
                },
            )
            raise audit_refusal(exc) from None
        self.statements += 1
        self.events += len(records)

    def _drop(self) -> None:
        """Forget the connection at once (no goodbye that could wait on a frozen server)."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), timeout=1.0)
            except Exception:
                with contextlib.suppress(Exception):
                    conn.terminate()
