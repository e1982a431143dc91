"""Circuit breaker in front of the database: once it is known down, refuse at once.

- **closed**: calls go to the database. Each failure that means "unreachable or no
  answer" (a connection error, or a wait that ran into the configured bound) counts;
  ``failure_threshold`` in a row open the breaker. A wait cut short by the *caller's*
  deadline proves nothing by itself: it only starts a probe (:meth:`suspect`), and a
  probe that fails opens the breaker.
- **open**: every call is refused immediately with UNAVAILABLE ``DATABASE_UNAVAILABLE``;
  a background task probes the database every ``probe_interval`` seconds.
- **half_open**: a probe is running (one at a time); calls are still refused. A probe
  that succeeds closes the breaker, one that fails opens it again.

Any call that succeeds (one already in flight when the breaker opened) closes it too:
the database answered. Readiness reads :attr:`CircuitBreaker.state`,
:meth:`CircuitBreaker.is_open` and :attr:`CircuitBreaker.down_since`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum

from vaultsvc.errors import Reason, Unavailable

_log = logging.getLogger("vaultsvc.storage")

Probe = Callable[[], Awaitable[None]]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        probe: Probe,
        *,
        failure_threshold: int,
        probe_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self._probe = probe
        self.failure_threshold = failure_threshold
        self.probe_interval = probe_interval
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._down_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed_for_good = False

    # --------------------------------------------------------------- read side

    @property
    def state(self) -> BreakerState:
        return self._state

    def is_open(self) -> bool:
        """True while calls are refused (open or half-open)."""
        return self._state is not BreakerState.CLOSED

    @property
    def down_since(self) -> float | None:
        """Monotonic time of the first failure of the current outage (None: no failure
        since the last success). For readiness: unreachable for longer than a grace."""
        return self._down_since

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def check(self) -> None:
        """Refuse at once while the database is known down."""
        if self._state is not BreakerState.CLOSED:
            raise Unavailable(
                "the database is unavailable; refusing calls until it answers again",
                reason=Reason.DATABASE_UNAVAILABLE,
            )

    # -------------------------------------------------------------- write side

    def record_success(self) -> None:
        self._failures = 0
        self._down_since = None
        if self._state is not BreakerState.CLOSED:
            self._state = BreakerState.CLOSED
            _log.warning("database answers again: circuit closed, calls accepted")

    def record_failure(self) -> None:
        self._failures += 1
        if self._down_since is None:
            self._down_since = self._clock()
        if self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
            self._open()

    def suspect(self) -> None:
        """A wait was cut short without proof either way: probe once in the background."""
        if self._state is BreakerState.CLOSED and self._task is None:
            self._start(self._probe_once())

    async def close(self) -> None:
        """Stop probing (the database is being closed)."""
        self._closed_for_good = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---------------------------------------------------------------- internal

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        _log.error(
            "database unreachable: circuit open, refusing calls until a probe succeeds",
            extra={"failures": self._failures},
        )
        if self._task is None:
            self._start(self._probe_until_closed())

    def _start(self, work: Awaitable[None]) -> None:
        if self._closed_for_good:
            close = getattr(work, "close", None)
            if close is not None:
                close()
            return
        try:
            self._task = asyncio.get_running_loop().create_task(
                self._run(work), name="database-breaker-probe"
            )
        except RuntimeError:  # no running loop (closing): nothing to probe with
            close = getattr(work, "close", None)
            if close is not None:
                close()

    async def _run(self, work: Awaitable[None]) -> None:
        try:
            await work
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    async def _try_probe(self) -> bool:
        try:
            await self._probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.info("database probe failed", extra={"error": type(exc).__name__})
            return False
        return True

    async def _probe_once(self) -> None:
        if await self._try_probe():
            self.record_success()
        else:
            self._failures = max(self._failures, self.failure_threshold - 1)
            self.record_failure()
            if self._state is not BreakerState.CLOSED:
                # Opened by this probe: keep probing from this task.
                await self._probe_until_closed()

    async def _probe_until_closed(self) -> None:
        while self._state is not BreakerState.CLOSED:
            await asyncio.sleep(self.probe_interval)
            if not self.is_open():  # an in-flight call succeeded meanwhile
                return
            self._state = BreakerState.HALF_OPEN
            if await self._try_probe():
                self.record_success()
                return
            if self.is_open():
                self._state = BreakerState.OPEN
