"""Audit trail: per-call context and the bounded write-behind buffer for resolves.

Mutations write their event in the same transaction as the change. Everything else is
written by the interceptor after the handler, before the response leaves. Resolves go
through :class:`AuditWriter`'s bounded buffer; when events cannot be written (buffer
full, or the last flush failed), resolves fail closed with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime

from vaultsvc.domain import AuditRecord
from vaultsvc.errors import Reason, Unavailable
from vaultsvc.storage.repository import Repository

_log = logging.getLogger("vaultsvc.audit")


@dataclass
class CallContext:
    """What the interceptor knows about the current RPC; handlers add names and tool."""

    method: str
    request_id: str
    peer: str
    principal: str = ""
    role: str = ""
    scopes: tuple[str, ...] = ()
    record: AuditRecord = field(init=False)
    audited: bool = False

    def __post_init__(self) -> None:
        self.record = AuditRecord(
            principal=self.principal,
            method=self.method,
            request_id=self.request_id,
            peer=self.peer,
        )

    def set_principal(self, principal: str, role: str, scopes: tuple[str, ...] = ()) -> None:
        self.principal = principal
        self.role = role
        self.scopes = scopes
        self.record.principal = principal


current_call: ContextVar[CallContext] = ContextVar("vaultsvc_current_call")


def audit_record() -> AuditRecord:
    """The audit record of the current call, for a handler to fill and write in its transaction."""
    call = current_call.get()
    return call.record


def mark_audited() -> None:
    current_call.get().audited = True


class AuditWriter:
    """Writes audit events; a bounded buffer flushed in batches for the resolve path."""

    def __init__(
        self,
        repository: Repository,
        *,
        buffer_size: int,
        flush_interval: float,
        batch_size: int = 500,
        write_timeout: float = 5.0,
    ) -> None:
        self._repo = repository
        self._queue: asyncio.Queue[AuditRecord] = asyncio.Queue(maxsize=buffer_size)
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._write_timeout = write_timeout
        self._task: asyncio.Task[None] | None = None
        self._healthy = True
        self._wakeup = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._retry: list[AuditRecord] = []

    @property
    def healthy(self) -> bool:
        return self._healthy

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-flusher")

    async def write(self, record: AuditRecord) -> None:
        """Write one event now; UNAVAILABLE if it cannot be stored."""
        try:
            async with asyncio.timeout(self._write_timeout):
                await self._repo.write_audit([record])
        except Exception as exc:
            _log.error("audit write failed", extra={"error": type(exc).__name__})
            raise Unavailable(
                "the audit trail cannot be written; request refused",
                reason=Reason.AUDIT_UNAVAILABLE,
            ) from None

    def ensure_accepting(self) -> None:
        """Fail closed before doing work whose event could not be recorded."""
        if not self._healthy or self._queue.full():
            raise Unavailable(
                "the audit trail cannot be written; request refused",
                reason=Reason.AUDIT_UNAVAILABLE,
            )

    async def ready(self) -> None:
        """Like :meth:`ensure_accepting`, but first tries one flush when degraded.

        So a recovered database is noticed by the very next resolve rather than after the
        flusher's backoff.
        """
        if self._healthy and not self._queue.full():
            return
        try:
            await self.flush()
        except Exception:
            self._mark(healthy=False)
        else:
            self._mark(healthy=True)
        self.ensure_accepting()

    def enqueue(self, record: AuditRecord) -> None:
        self.ensure_accepting()
        if record.time is None:
            record.time = datetime.now(UTC)
        self._queue.put_nowait(record)
        if self._queue.qsize() >= self._batch_size:
            self._wakeup.set()

    def _mark(self, *, healthy: bool) -> None:
        if healthy and not self._healthy:
            _log.warning("audit trail writable again; resolves accepted")
        elif not healthy and self._healthy:
            _log.error("audit events cannot be written; refusing resolves until they can")
        self._healthy = healthy

    async def _run(self) -> None:
        backoff = self._flush_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=backoff)
            self._wakeup.clear()
            try:
                await self.flush()
            except Exception:
                self._mark(healthy=False)
                backoff = min(backoff * 2, 2.0)
            else:
                self._mark(healthy=True)
                backoff = self._flush_interval

    async def flush(self) -> None:
        """Write everything buffered. A batch that fails is kept and retried first, so no
        event is dropped; the queue bound plus one batch bounds the memory held."""
        async with self._flush_lock:
            while self._retry or not self._queue.empty():
                if not self._retry:
                    count = min(self._batch_size, self._queue.qsize())
                    self._retry = [self._queue.get_nowait() for _ in range(count)]
                async with asyncio.timeout(self._write_timeout):
                    await self._repo.write_audit(self._retry)
                self._retry = []

    async def stop(self, timeout: float = 5.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await asyncio.wait_for(self.flush(), timeout=timeout)
        except Exception as exc:
            _log.error(
                "audit events lost at shutdown",
                extra={
                    "error": type(exc).__name__,
                    "count": self._queue.qsize() + len(self._retry),
                },
            )
