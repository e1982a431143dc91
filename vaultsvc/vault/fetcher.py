"""Cache misses of concurrent resolves, fetched together: one query per batch.

A resolve whose names are not all in the sealed-row cache asks :class:`RowFetcher` for
the rest. Requests that arrive in the same event-loop turn, or while the fetches in flight
use every slot, wait in an *open batch*; the batch starts on the next turn when a slot is
free (at most ``max_in_flight`` queries at once, each on its own pool connection) and
carries at most ``max_names`` names, so one statement reads the rows of many resolves.
A request never joins a batch whose query has started: its rows come from a snapshot
taken after it asked (read-your-writes holds for a replica's own changes).

Every caller gets exactly the rows it named. A batch takes its cache ticket
(:meth:`~vaultsvc.vault.cache.SealedRowCache.begin_fill`) right before ITS query and
stores what it read with that ticket, so a change that races the read is served once and
never cached (the same guarantee as a lone fetch). A failed query fails every caller of
its batch with the same (already mapped) error, e.g. ``DATABASE_UNAVAILABLE``.

Waits: a caller waits for its own result under its own deadline (the RPC's); leaving
early never cancels the query for the others. The query itself is bounded like every
unit of work (``database.operation_timeout``); a batch whose callers have all gone is not
started, or is cancelled if it is running (its connection is terminated, as a caller's
deadline did when each resolve ran its own query).
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
from collections import deque
from collections.abc import Sequence
from typing import Final

from vaultsvc.storage.repository import ConfigRow, Repository, SealedRow
from vaultsvc.vault.cache import SealedRowCache

#: Most names (secrets plus configs) one batch's query carries. A request naming more
#: (MAX_PLACEHOLDERS allows a few hundred) still gets a batch of its own.
MAX_BATCH_NAMES: Final = 256
#: Most batch queries in flight at once, per process (each holds a pool connection).
MAX_IN_FLIGHT: Final = 2

Rows = tuple[dict[str, SealedRow], dict[str, ConfigRow]]


def _own_copy(exc: Exception) -> Exception:
    """The same error as a fresh object for each caller: one exception object raised in
    several tasks would collect all their tracebacks (and chain them into each other)."""
    try:
        return copy.copy(exc)
    except Exception:
        return exc


class _Waiter:
    __slots__ = ("configs", "future", "secrets")

    def __init__(
        self, future: asyncio.Future[Rows], secrets: Sequence[str], configs: Sequence[str]
    ) -> None:
        self.future = future
        self.secrets = secrets
        self.configs = configs


class _Batch:
    __slots__ = ("configs", "context", "secrets", "size", "task", "waiters")

    def __init__(self) -> None:
        self.secrets: dict[str, None] = {}
        self.configs: dict[str, None] = {}
        self.size = 0
        self.waiters: list[_Waiter] = []
        self.task: asyncio.Task[None] | None = None
        self.context = contextvars.copy_context()
        """The first caller's context: the query's trace span is a child of its RPC."""

    def add(self, waiter: _Waiter) -> None:
        self.waiters.append(waiter)
        self.secrets.update(dict.fromkeys(waiter.secrets))
        self.configs.update(dict.fromkeys(waiter.configs))
        self.size = len(self.secrets) + len(self.configs)

    def abandoned(self) -> bool:
        return all(w.future.done() for w in self.waiters)

    def drop_departed(self) -> None:
        """Before the query starts: forget the names only callers that left asked for."""
        waiters = [w for w in self.waiters if not w.future.done()]
        if len(waiters) != len(self.waiters):
            self.waiters, self.secrets, self.configs = [], {}, {}
            for waiter in waiters:
                self.add(waiter)


class RowFetcher:
    """Fetches the sealed rows and config values resolves miss, batched (one per process,
    used from its event loop only)."""

    def __init__(
        self,
        repository: Repository,
        cache: SealedRowCache,
        *,
        max_names: int = MAX_BATCH_NAMES,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.repo = repository
        self.cache = cache
        self.max_names = max_names
        self.max_in_flight = max_in_flight
        self.queries = 0
        """Batch queries started (tests and benchmarks)."""
        self._open: _Batch | None = None
        self._queued: deque[_Batch] = deque()
        self._in_flight = 0
        self._scheduled = False

    @property
    def in_flight(self) -> int:
        """Batch queries running now."""
        return self._in_flight

    async def fetch(self, secret_keys: Sequence[str], config_keys: Sequence[str]) -> Rows:
        """The rows of ``secret_keys`` and the values of ``config_keys`` (lower-cased
        names) that exist, read in one snapshot taken after this call began; stored in
        the cache unless a change raced the read."""
        loop = asyncio.get_running_loop()
        size = len(secret_keys) + len(config_keys)
        batch = self._open
        if batch is None or batch.size + size > self.max_names:
            batch = self._open = _Batch()
            self._queued.append(batch)
        waiter = _Waiter(loop.create_future(), secret_keys, config_keys)
        batch.add(waiter)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            # Our deadline (or the RPC) ended the wait; the others keep theirs.
            if batch.task is not None and not batch.task.done() and batch.abandoned():
                batch.task.cancel()
            raise

    def _dispatch(self) -> None:
        self._scheduled = False
        while self._queued and self._in_flight < self.max_in_flight:
            batch = self._queued.popleft()
            if batch is self._open:
                self._open = None
            if batch.abandoned():
                continue
            batch.drop_departed()
            self._in_flight += 1
            self.queries += 1
            batch.task = asyncio.get_running_loop().create_task(
                self._run(batch), name="resolve-fetch", context=batch.context
            )
            batch.task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight -= 1
        if not task.cancelled():
            task.exception()  # retrieved: _run hands every failure to its callers
        self._dispatch()

    async def _run(self, batch: _Batch) -> None:
        cache = self.cache
        try:
            ticket = cache.begin_fill()
            secrets, configs = await self.repo.fetch_for_resolve(
                list(batch.secrets), list(batch.configs)
            )
            if cache.before_store is not None:
                await cache.before_store()
            cache.store(ticket, batch.secrets, batch.configs, secrets, configs)
        except asyncio.CancelledError:
            for waiter in batch.waiters:
                waiter.future.cancel()
            raise
        except Exception as exc:
            for waiter in batch.waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(_own_copy(exc))
            return
        if len(batch.waiters) == 1:
            waiter = batch.waiters[0]
            if not waiter.future.done():
                waiter.future.set_result((secrets, configs))
            return
        for waiter in batch.waiters:
            if not waiter.future.done():
                waiter.future.set_result(
                    (
                        {k: secrets[k] for k in waiter.secrets if k in secrets},
                        {k: configs[k] for k in waiter.configs if k in configs},
                    )
                )
