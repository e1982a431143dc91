"""Audit trail: per-call context and the group-committing writer.

Mutations write their event in the same transaction as the change. Every other call's
event (resolves included) is committed by :class:`AuditWriter` after the handler and
BEFORE the reply leaves: events that arrive while a commit is in flight wait for the next
one, which writes them all in one INSERT, then wakes every waiter. A reply is therefore
never sent for an event that is not durable, and concurrent calls share a commit.

It fails closed and fast: an event that cannot be written turns its call into UNAVAILABLE
``AUDIT_UNAVAILABLE`` (every waiter of a failed batch gets it); the queue is bounded and a
full queue refuses at once; while a commit has been in flight longer than the stall
threshold (counted in time the event loop was free to see its answer, so a CPU-busy loop
does not make a healthy commit look stuck), new calls are refused at once rather than
queueing behind it (a failed commit also fails every call queued behind it). Refused
unauthenticated calls are not written one by one: they are counted per peer address and
minute, and each count becomes ONE event (method ``UNAUTHENTICATED``, ``count``) when its
minute ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from vaultsvc.domain import AuditRecord
from vaultsvc.errors import Reason, Unavailable, VaultError
from vaultsvc.telemetry import metrics

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


class AuditSink(Protocol):
    """Where batches go: :class:`vaultsvc.storage.audit_store.AuditStore` in a server."""

    async def insert(self, records: Sequence[AuditRecord]) -> None: ...

    async def close(self) -> None: ...


STALL_TICK = 0.01
"""Seconds per tick of a commit's in-flight clock (see :meth:`AuditWriter.ensure_accepting`)."""
#: Method name of the aggregated event for refused unauthenticated calls (shared/API.md).
UNAUTHENTICATED_METHOD = "UNAUTHENTICATED"
REFUSAL_WINDOW = 60.0
"""Seconds one aggregated unauthenticated-refusal event covers."""
_MAX_REFUSAL_PEERS = 10_000
_OTHER_PEERS = "other"


def peer_address(peer: str) -> str:
    """A peer without its port (``ipv4:10.0.0.7:51234`` → ``ipv4:10.0.0.7``; the console's
    ``http:10.0.0.7:51234`` → ``http:10.0.0.7``)."""
    if peer.startswith(("ipv4:", "ipv6:", "http:")):
        return peer.rpartition(":")[0]
    return peer


def _refused(cause: BaseException | None = None) -> VaultError:
    """A fresh error per refused call (never one object raised in many tasks)."""
    if isinstance(cause, VaultError) and cause.reason in (
        Reason.DATABASE_READ_ONLY,
        Reason.STORAGE_FULL,
    ):
        return type(cause)(cause.message, reason=cause.reason)
    return Unavailable(
        "the audit trail cannot be written; request refused", reason=Reason.AUDIT_UNAVAILABLE
    )


def _retrieve(done: asyncio.Future[None]) -> None:
    """Retrieve a commit future's outcome: a waiter that went away leaves none unretrieved
    (a module function, not a closure per call)."""
    if not done.cancelled():
        done.exception()


class AuditWriter:
    """Group commit of audit events, bounded and failing fast (see the module docstring)."""

    def __init__(
        self,
        sink: AuditSink,
        *,
        queue_size: int,
        write_timeout: float,
        stall_threshold: float,
        batch_size: int = 1000,
        database_down: Callable[[], bool] | None = None,
    ) -> None:
        self.sink = sink
        self._database_down = database_down
        self._queue_size = queue_size
        self._write_timeout = write_timeout
        self._stall_threshold = stall_threshold
        self._batch_size = batch_size
        self._pending: list[tuple[AuditRecord, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._inflight_since: float | None = None
        self._inflight_ticks = 0
        self._ticker: asyncio.TimerHandle | None = None
        self._healthy = True
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._refusal_task: asyncio.Task[None] | None = None
        self._refusals: dict[tuple[str, float], int] = {}

    @property
    def healthy(self) -> bool:
        """False from a failed commit until one succeeds."""
        return self._healthy

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-group-commit")
            self._refusal_task = asyncio.create_task(
                self._refusal_loop(), name="audit-refusal-counts"
            )

    # ------------------------------------------------------------ group commit

    def ensure_accepting(self) -> None:
        """Refuse at once (UNAVAILABLE AUDIT_UNAVAILABLE) when an event would not be
        committed soon: stopped, queue full, or a commit stuck past the stall threshold;
        UNAVAILABLE DATABASE_UNAVAILABLE while the database is known down (the circuit
        breaker is open), so a resolve served from the cache is refused as fast as the rest."""
        if self._database_down is not None and self._database_down():
            raise Unavailable(
                "the database is unavailable; request refused",
                reason=Reason.DATABASE_UNAVAILABLE,
            )
        # Stuck means the database has not answered for stall_threshold of time in which the
        # event loop was free to notice an answer: a loop busy with other calls (CPU
        # overload) delays the answer's processing, not the commit, and must not turn a
        # healthy commit into refusals. The write timeout bounds the commit either way.
        stuck = (
            self._inflight_since is not None
            and self._inflight_ticks * STALL_TICK > self._stall_threshold
        )
        if self._stopped or len(self._pending) >= self._queue_size or stuck:
            raise _refused()

    def submit(self, record: AuditRecord) -> asyncio.Future[None]:
        """Queue ``record`` for the next group commit; the future resolves once it is
        committed (or fails with UNAVAILABLE AUDIT_UNAVAILABLE)."""
        self.ensure_accepting()
        if record.time is None:
            record.time = datetime.now(UTC)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Retrieved here too, so a waiter that went away never leaves it unretrieved.
        done.add_done_callback(_retrieve)
        self._pending.append((record, done))
        self._idle.clear()
        self._wakeup.set()
        return done

    async def commit(self, record: AuditRecord) -> None:
        """Return once ``record`` is durable; UNAVAILABLE AUDIT_UNAVAILABLE if it is not."""
        done = self.submit(record)
        try:
            # Bounded beyond the batch in flight plus this one; the sink bounds each. Not
            # shielded: a waiter that goes away cancels only its own future; its record is
            # queued regardless and is still written with its batch.
            async with asyncio.timeout(2 * self._write_timeout + 1.0):
                await done
        except TimeoutError:
            raise _refused() from None

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._batch_size]
                del self._pending[: self._batch_size]
                self._inflight_since = time.monotonic()
                self._inflight_ticks = 0
                metrics.audit_batch(len(batch))
                try:
                    await self._insert([record for record, _ in batch])
                except Exception as exc:
                    # Those queued behind it would hit the same wall: fail them now too,
                    # with the reason the database gave (read-only, full) when it gave one.
                    batch += self._pending
                    self._pending.clear()
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(_refused(exc))
                    self._failed()
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
                    self._succeeded()
                finally:
                    self._inflight_since = None
            self._idle.set()

    async def _insert(self, records: list[AuditRecord]) -> None:
        """The sink's insert, counting ``STALL_TICK``s the loop was free while it ran.

        Awaited directly (no task, no polling): one timer is armed per commit and only
        re-armed from its own callback, so a commit that ends within a tick costs one
        cancelled timer, and a tick counts only when the loop was free to run it."""
        loop = asyncio.get_running_loop()
        self._ticker = loop.call_later(STALL_TICK, self._tick, loop)
        try:
            await self.sink.insert(records)
        finally:
            self._ticker.cancel()
            self._ticker = None

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._inflight_ticks += 1
        self._ticker = loop.call_later(STALL_TICK, self._tick, loop)

    def _failed(self) -> None:
        if self._healthy:
            _log.error("audit events cannot be written; refusing calls until they can")
        self._healthy = False

    def _succeeded(self) -> None:
        if not self._healthy:
            _log.warning("audit trail writable again; calls accepted")
        self._healthy = True

    # -------------------------------------------- refused unauthenticated calls

    def count_refusal(self, peer: str) -> None:
        """Count one refused unauthenticated call of ``peer`` in the current minute."""
        window = time.time() // REFUSAL_WINDOW * REFUSAL_WINDOW
        key = (peer_address(peer), window)
        if key not in self._refusals and len(self._refusals) >= _MAX_REFUSAL_PEERS:
            key = (_OTHER_PEERS, window)
        self._refusals[key] = self._refusals.get(key, 0) + 1

    async def flush_refusals(self, *, everything: bool = False) -> None:
        """Write one event per peer and window: windows that have ended, or all of them.

        Counts that cannot be written are kept for the next attempt."""
        current = time.time() // REFUSAL_WINDOW * REFUSAL_WINDOW
        due = {k: n for k, n in self._refusals.items() if everything or k[1] < current}
        if not due:
            return
        for key in due:
            del self._refusals[key]
        records = [
            AuditRecord(
                principal="",
                method=UNAUTHENTICATED_METHOD,
                request_id=uuid.uuid4().hex,
                peer=peer,
                outcome="UNAUTHENTICATED",
                time=datetime.fromtimestamp(window, UTC),
                count=n,
            )
            for (peer, window), n in due.items()
        ]
        results = await asyncio.gather(*(self.commit(r) for r in records), return_exceptions=True)
        failed = False
        for record, result in zip(records, results, strict=True):
            if isinstance(result, BaseException):
                failed = True
                key = (record.peer, record.time.timestamp() if record.time else current)
                self._refusals[key] = self._refusals.get(key, 0) + record.count
        if failed:
            raise _refused()

    async def _refusal_loop(self) -> None:
        while True:
            now = time.time()
            await asyncio.sleep(REFUSAL_WINDOW - now % REFUSAL_WINDOW + 0.05)
            with contextlib.suppress(Unavailable):
                await self.flush_refusals()

    # ------------------------------------------------------------------ both

    async def flush(self) -> None:
        """Write every refusal count, then wait until nothing is queued or in flight."""
        await self.flush_refusals(everything=True)
        await asyncio.wait_for(self._idle.wait(), timeout=2 * self._write_timeout + 1.0)

    async def stop(self, timeout: float = 5.0) -> None:
        """Write what is counted and queued (bounded), then refuse everything."""
        if self._refusal_task is not None:
            self._refusal_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refusal_task
        try:
            await asyncio.wait_for(self.flush(), timeout=timeout)
        except Exception as exc:
            _log.error(
                "audit refusal counts lost at shutdown",
                extra={"error": type(exc).__name__, "count": sum(self._refusals.values())},
            )
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for _, done in self._pending:
            if not done.done():
                done.set_exception(_refused())
        self._pending.clear()
        await self.sink.close()
