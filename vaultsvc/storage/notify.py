"""Change notifications: one dedicated (never pooled) connection LISTENing for the
changes every writer commits, keeping this process's sealed-row cache coherent.

The database side is migration V2: a trigger on ``secrets`` and ``config_values`` (so every
writer is covered: servers, ``keys rewrap``, plain SQL) bumps ``change_state.change_seq``
and sends ``pg_notify('vault_changes', '<seq> <kind> <name_key>')`` in the changing
transaction. The one-row counter serialises changes, so notifications arrive in sequence
order without gaps; a gap means one was lost and the cache is cleared at once. A lost
*last* notification shows as the committed sequence moving past the last one received:
the periodic check (``cache.check_interval``) clears the cache when that is still so one
interval later.

When the connection drops the cache is bypassed and cleared (a warning), the connection
is re-opened with backoff, and the cache is trusted again (from empty) once LISTEN is back
(an info line).

``LISTEN`` needs a session: the listener connects to ``database.direct_url`` (Postgres
itself), never through a transaction pooler such as pgbouncer in transaction mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

import asyncpg

from vaultsvc.telemetry import metrics

_log = logging.getLogger("vaultsvc.storage")

CHANNEL = "vault_changes"
_CURRENT_SEQ = "SELECT change_seq FROM change_state WHERE id = 1"
_KINDS = frozenset({"s", "c", "t"})  # t: access_tokens (V9), key = the token id


class ChangeSink(Protocol):
    """What the listener drives (``vaultsvc.vault.cache.SealedRowCache``)."""

    def invalidate(self, kind: Any, key: str) -> None: ...
    def clear(self) -> None: ...
    def suspend(self) -> None: ...
    def resume(self) -> None: ...


class ChangeListener:
    """Feeds committed changes into the cache (a :class:`ChangeSink`) and guards its trust."""

    def __init__(
        self,
        url: str,
        cache: ChangeSink,
        *,
        check_interval: float = 1.0,
        connect_timeout: float = 5.0,
        max_backoff: float = 5.0,
    ) -> None:
        self.url = url
        self.cache = cache
        self.check_interval = check_interval
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._ever_listened = False
        self._last_seq = 0
        self._suspect_seq: int | None = None

    @property
    def listening(self) -> bool:
        return self._conn is not None

    @property
    def seen_seq(self) -> int:
        """The highest change sequence this process has accounted for."""
        return self._last_seq

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the listening connection (for operators and tests)."""
        return None if self._conn is None else int(self._conn.get_server_pid())

    async def start(self) -> None:
        """Try to listen at once (the cache stays bypassed if that fails), then keep at it."""
        with contextlib.suppress(Exception):
            await self._connect()
        if self._conn is None:
            _log.warning("change listener not connected: resolve cache bypassed until it is")
        self._task = asyncio.create_task(self._run(), name="vault-change-listener")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        conn, self._conn = self._conn, None
        self.cache.suspend()
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), timeout=2)
            except Exception:
                conn.terminate()

    # --------------------------------------------------------------- connection

    async def _connect(self) -> None:
        conn = await asyncpg.connect(
            self.url,
            timeout=self.connect_timeout,
            command_timeout=self.connect_timeout,
            statement_cache_size=0,
            server_settings={"application_name": "vaultsvc-listener"},
        )
        try:
            await conn.add_listener(CHANNEL, self._on_notification)
            conn.add_termination_listener(self._on_terminated)
            seq = int(await conn.fetchval(_CURRENT_SEQ))
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._last_seq = seq
        self._suspect_seq = None
        self.cache.resume()
        if self._ever_listened:
            _log.info("change listener listening again: resolve cache back in use")
        self._ever_listened = True

    def _lost(self, why: str) -> None:
        if self._stopping:
            return
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self.cache.suspend()
        conn.terminate()
        _log.warning(
            "change listener lost: resolve cache bypassed and cleared until listening again",
            extra={"why": why},
        )
        self._wake.set()

    def _on_terminated(self, conn: Any) -> None:
        if conn is self._conn:
            self._lost("connection closed")

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            if self._conn is None:
                try:
                    await self._connect()
                    backoff = 0.05
                except Exception as exc:
                    _log.debug(
                        "change listener reconnect failed", extra={"error": type(exc).__name__}
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.check_interval)
            conn = self._conn
            if conn is None:
                continue
            try:
                committed = int(
                    await asyncio.wait_for(conn.fetchval(_CURRENT_SEQ), self.connect_timeout)
                )
            except Exception as exc:
                if conn is self._conn:
                    self._lost(f"sequence check failed: {type(exc).__name__}")
                continue
            if conn is self._conn:
                self.check_sequence(committed)

    # ------------------------------------------------------------ notifications

    def _on_notification(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        if conn is self._conn:
            self.on_payload(str(payload))

    def on_payload(self, payload: str) -> None:
        """One notification: ``<seq> <kind> <name_key>`` (kind ``*``: everything)."""
        seq_text, _, rest = payload.partition(" ")
        kind, _, key = rest.partition(" ")
        try:
            seq = int(seq_text)
        except ValueError:
            seq = 0
        if seq == 0 or (kind not in _KINDS and kind != "*"):
            _log.error("unreadable change notification: cache cleared")
            self.cache.clear()
            return
        if seq > self._last_seq + 1:
            _log.warning(
                "change notifications were lost: cache cleared",
                extra={"expected_seq": self._last_seq + 1, "got_seq": seq},
            )
            self.cache.clear()
        elif kind == "*":
            self.cache.clear()
        else:
            self.cache.invalidate(kind, key)
        self._last_seq = max(self._last_seq, seq)

    def check_sequence(self, committed: int) -> None:
        """The periodic check: the committed sequence ahead of the notifications received
        for a whole interval means the last ones were lost."""
        metrics.change_lag(committed - self._last_seq)
        if committed <= self._last_seq:
            self._suspect_seq = None
            return
        if self._suspect_seq is not None and self._last_seq < self._suspect_seq:
            _log.warning(
                "change sequence moved without notifications: cache cleared",
                extra={"seen_seq": self._last_seq, "committed_seq": committed},
            )
            self.cache.clear()
            self._last_seq = committed
            self._suspect_seq = None
            return
        self._suspect_seq = committed
