"""The front door: what a call may hold before, while and after it is served.

No number of unauthenticated, silent or slow-reading clients may starve authenticated
calls or health checks (issue 15). Each kind of work has its own bounded budget:

- every call: its request message must arrive within ``receive_timeout`` of the call's
  start (vault methods are served as client-streaming handlers, so the vault sees the call
  at once and can time the wait; a unary handler only runs once the message is there);
- unauthenticated calls: refused from their headers, before their message is read; their
  audit is a per-peer, per-minute counter (:meth:`AuditWriter.count_refusal`), no write;
- authenticated work: an admission queue (:class:`Admission`) in front of the pool and the
  CPU: ``max_concurrent_rpcs`` run (a slot is held until the reply is decided, audit
  commit included), the rest is shed with UNAVAILABLE ``OVERLOADED`` and RetryInfo unless
  it can usefully wait (below);
- Health/Watch and reflection streams: at most ``max_streams`` open, more refused with
  RESOURCE_EXHAUSTED at once; Health/Check and Health/List never queue behind anything;
- resolve replies not yet taken by their clients: at most ``max_reply_bytes_in_flight``
  bytes per process (:class:`ReplyBudget`).

Admission under overload (issue 15 item 4). Work that times out after using a slot is
worse than work refused at once: it costs the same and nobody gets the answer. So a call
that cannot run at once waits only if it can still be served in time:

- the service time ``S`` is an EWMA (weight ``EWMA_WEIGHT``) of how long admitted calls held
  their slot; a call at position ``p`` of the queue expects to wait ``S * p / limit``;
- it is shed at once when the queue holds ``max_queued_rpcs`` already, or when that
  expected wait exceeds its allowed wait: its remaining deadline minus ``S``, capped by
  ``max_queue_wait``;
- CoDel-style: once the queue has not been empty for ``STANDING_INTERVAL`` (arrivals have
  outpaced service for a while, a standing queue that only adds latency), new arrivals are
  allowed ``STANDING_TARGET`` of wait instead of ``max_queue_wait``; a burst into an idle
  queue still gets the full wait;
- a queued call gives up (OVERLOADED) when its allowed wait ends, so it never takes a slot
  it could not use;
- fair turns: waiting calls are granted round-robin by principal, and a call's expected
  wait counts its position in that order (behind its own principal's waiting calls, one
  turn of each other principal per call). A principal with nothing waiting may queue one
  call even when the queue is full: one flooding principal sheds its own excess, not a
  well-behaved neighbour's calls;
- adaptive limit (``adaptive_concurrency``, off by default: on this 2-core machine
  ``bench_overload`` could not show that it helps, see the README):
  ``max_concurrent_rpcs`` is the ceiling; every ``LIMIT_WINDOW`` admitted
  calls the limit takes a gradient step (Netflix concurrency-limits' "gradient" limiter):
  it grows while the service time stays within ``LIMIT_TOLERANCE`` of the unloaded service
  time (the fastest recent call), and shrinks in proportion past it (never below
  ``LIMIT_FLOOR``). On one event loop more concurrency past that point only makes every
  admitted call slower and late; with the lower limit the excess waits in the queue,
  where the deadline rule above sheds it at once.

Every refusal is counted in :attr:`FrontDoor.refused` and logged, at most once per
``LOG_INTERVAL`` seconds per kind (with the count since the previous line).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from vaultsvc.api.status import status_for
from vaultsvc.audit import current_call
from vaultsvc.config import Settings
from vaultsvc.errors import (
    DeadlineExceeded,
    InvalidArgument,
    Reason,
    ResourceExhausted,
    Unavailable,
    VaultError,
)
from vaultsvc.telemetry import metrics

_log = logging.getLogger("vaultsvc.frontdoor")

LOG_INTERVAL = 5.0
"""Seconds between two log lines about the same kind of refusal."""

#: Open methods whose calls are long-lived streams (capped by ``max_streams``).
STREAMING_OPEN_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)


class Refusals:
    """Counts refusals by kind and logs them without flooding the log."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._logged_at: dict[str, float] = {}
        self._logged_count: dict[str, int] = {}

    def __getitem__(self, kind: str) -> int:
        return self.counts[kind]

    def note(self, kind: str, setting: str, message: str) -> None:
        self.counts[kind] += 1
        metrics.refused(kind)
        now = time.monotonic()
        if now - self._logged_at.get(kind, -LOG_INTERVAL) < LOG_INTERVAL:
            return
        since = self.counts[kind] - self._logged_count.get(kind, 0)
        self._logged_at[kind] = now
        self._logged_count[kind] = self.counts[kind]
        _log.warning(
            f"calls refused: {message} (limit: {setting})",
            extra={"kind": kind, "refused": since, "refused_total": self.counts[kind]},
        )


STANDING_INTERVAL = 0.1
"""Seconds the admission queue must stay non-empty before it counts as a standing queue."""
STANDING_TARGET = 0.05
"""Longest queue wait a call is given while the queue is standing (seconds)."""
EWMA_WEIGHT = 0.2
"""Weight of the newest admitted call's duration in the service-time estimate."""
LIMIT_WARMUP = 32
"""Admitted calls measured before the concurrency limit starts to adapt."""
LIMIT_WINDOW = 16
"""The concurrency limit is recomputed once per this many admitted calls."""
LIMIT_TOLERANCE = 3.0
"""Service time, as a multiple of the unloaded one, above which the limit shrinks."""
LIMIT_FLOOR = 4
"""The adaptive concurrency limit never goes below this (nor above ``max_concurrent_rpcs``)."""
BASELINE_DRIFT = 1.02
"""Per window, the unloaded service time estimate rises by this factor unless a faster call
lowers it again: an old minimum (a cold cache, an idle database) is forgotten gradually."""


class Admission:
    """A bounded, deadline-aware, per-principal fair queue in front of the work (see the
    module docstring).

    ``limit`` calls run (with ``adaptive``, adapted between ``LIMIT_FLOOR`` and
    ``max_limit`` to the measured service time); a call that cannot run at once is shed
    at once (UNAVAILABLE ``OVERLOADED``) when the queue is full or when its expected wait
    would not leave it time to be served; otherwise it waits, at most ``max_wait``
    (``STANDING_TARGET`` while the queue is standing) and never past the point where its
    deadline could still be met.
    Waiting calls are granted round-robin by key (the principal): one principal's flood
    waits behind itself, not in front of everyone else.
    """

    def __init__(
        self,
        limit: int,
        max_queued: int,
        max_wait: float,
        clock: Callable[[], float] = time.monotonic,
        adaptive: bool = False,
    ) -> None:
        self.max_limit = limit
        self.limit: float = limit
        """The concurrency limit now (see :meth:`_adapt`)."""
        self.adaptive = adaptive and limit > LIMIT_FLOOR
        self.max_queued = max_queued
        self.max_wait = max_wait
        self.running = 0
        self.service_time = 0.0
        """EWMA of how long admitted calls held their slot (0 until one finished)."""
        self.baseline = 0.0
        """The unloaded service time: the fastest recent admitted call (0 until one)."""
        self._samples = 0
        self._clock = clock
        self._queues: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self._turns: collections.deque[str] = collections.deque()
        """Keys with waiting calls, in the order their next call is granted."""
        self._waiting = 0
        """Waiters in ``_queues`` (one that gave up leaves at once, see :meth:`_forget`)."""
        self._empty_at = clock()
        self.retry_delay = min(1.0, max(0.05, max_wait / 2))

    @property
    def queued(self) -> int:
        return self._waiting

    def queued_for(self, key: str) -> int:
        queue = self._queues.get(key)
        return len(queue) if queue is not None else 0

    def standing(self) -> bool:
        """True when the queue has not been empty for ``STANDING_INTERVAL``: arrivals have
        outpaced service for a while, so a long wait would only add latency."""
        if not self.queued:
            self._empty_at = self._clock()
            return False
        return self._clock() - self._empty_at >= STANDING_INTERVAL

    def expected_wait(self, position: int) -> float:
        """Seconds until the call at ``position`` (1 = next) gets a slot, estimated from the
        service time: slots free at ``limit / service_time`` per second."""
        return self.service_time * position / self.limit

    def position(self, key: str) -> int:
        """Where a new call of ``key`` would stand: behind its own waiting calls, each of
        which waits for one turn of every other key with calls waiting."""
        own = self.queued_for(key)
        others = sum(1 for k in self._turns if k != key)
        return min(self.queued, own * (others + 1) + others) + 1

    def allowed_wait(self, deadline: float) -> float:
        """How long a call arriving now may wait: its budget minus one service time (a call
        granted later than that would end DEADLINE_EXCEEDED after using a slot), capped by
        ``max_wait``, or by ``STANDING_TARGET`` while the queue is standing."""
        cap = min(self.max_wait, STANDING_TARGET) if self.standing() else self.max_wait
        return min(cap, deadline - self._clock() - self.service_time)

    def _overloaded(self, why: str) -> Unavailable:
        return Unavailable(
            f"the vault is overloaded ({why}); retry later",
            reason=Reason.OVERLOADED,
            retry_delay=self.retry_delay,
        )

    def _check_admissible(self, deadline: float, key: str) -> float:
        """The wait allowed to a call that must queue; OVERLOADED at once when it may not.
        A key with no call waiting may queue one even in a full queue (its fair share)."""
        if self.queued >= self.max_queued and self.queued_for(key):
            raise self._overloaded("admission queue full")
        allowed = self.allowed_wait(deadline)
        if allowed <= 0 or self.expected_wait(self.position(key)) > allowed:
            raise self._overloaded("the wait for a slot would outlast the call's deadline")
        return allowed

    def precheck(self, deadline: float, key: str = "") -> None:
        """OVERLOADED now if a call of ``key`` arriving now would be shed: lets a call be
        refused before its request message is read and decoded (:meth:`acquire` decides)."""
        if self.running >= self.limit or self._turns:
            self._check_admissible(deadline, key)

    async def acquire(self, deadline: float, key: str = "") -> float:
        """Take one execution slot (see the class docstring); ``deadline`` is monotonic;
        ``key`` names whose call it is (the principal), for fair turns in the queue.
        Returns when it was granted, to hand back to :meth:`release` exactly once."""
        if self.running < self.limit and not self._turns:
            self.running += 1
            return self._clock()
        allowed = self._check_admissible(deadline, key)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.queued:
            self._empty_at = self._clock()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = collections.deque()
            self._turns.append(key)
        queue.append(waiter)
        self._waiting += 1
        try:
            async with asyncio.timeout(allowed):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted just as we gave up: pass it on
            self._forget(key, waiter)
            if isinstance(exc, TimeoutError):
                raise self._overloaded("queued too long") from None
            raise
        return self._clock()

    def release(self, granted: float) -> None:
        """Give back the slot :meth:`acquire` granted at ``granted``."""
        self._observe(self._clock() - granted)
        self._release()

    @contextlib.asynccontextmanager
    async def slot(self, deadline: float, key: str = "") -> AsyncIterator[None]:
        """Hold one execution slot for the block (:meth:`acquire` and :meth:`release`)."""
        granted = await self.acquire(deadline, key)
        try:
            yield
        finally:
            self.release(granted)

    def _forget(self, key: str, waiter: asyncio.Future[None]) -> None:
        queue = self._queues.get(key)
        if queue is None:
            return
        try:
            queue.remove(waiter)
            self._waiting -= 1
        except ValueError:
            pass  # already granted (popped)
        if not queue:
            del self._queues[key]
            with contextlib.suppress(ValueError):
                self._turns.remove(key)

    def _observe(self, took: float) -> None:
        if self.service_time == 0.0:
            self.service_time = self.baseline = took
        else:
            self.service_time += EWMA_WEIGHT * (took - self.service_time)
            self.baseline = min(self.baseline, took)
        self._samples += 1
        if self.adaptive and self._samples >= LIMIT_WARMUP and self._samples % LIMIT_WINDOW == 0:
            self._adapt()

    def _adapt(self) -> None:
        """Gradient step (as in Netflix's concurrency-limits): while the service time stays
        within ``LIMIT_TOLERANCE`` of the unloaded one, the limit grows by its square root
        (room to probe); past it, the limit shrinks in proportion, so that work waits in
        the queue, where it can be shed, not in the event loop, where it only runs late."""
        if self.service_time <= 0.0:
            return
        gradient = max(0.5, min(1.0, LIMIT_TOLERANCE * self.baseline / self.service_time))
        target = self.limit * gradient + self.limit**0.5
        smoothed = 0.8 * self.limit + 0.2 * target
        self.limit = max(float(LIMIT_FLOOR), min(float(self.max_limit), smoothed))
        self.baseline *= BASELINE_DRIFT

    def _release(self) -> None:
        while self._turns:
            key = self._turns.popleft()
            queue = self._queues[key]
            while queue:
                waiter = queue.popleft()
                self._waiting -= 1
                if not waiter.done():
                    if queue:
                        self._turns.append(key)  # its next call waits for the next turn
                    else:
                        del self._queues[key]
                    waiter.set_result(None)  # the slot moves to the waiter
                    if not self._turns:
                        self._empty_at = self._clock()
                    return
            del self._queues[key]
        self.running -= 1


class ReplyBudget:
    """Bytes of replies handed to grpc but not yet taken by their clients, per process.

    A client that asks for big replies and stops reading leaves each one buffered in the
    server until its call ends; this bounds the sum. A reservation is released when grpc
    reports the call done (sent, failed or cancelled).
    """

    def __init__(self, limit: int, refusals: Refusals) -> None:
        self.limit = limit
        self.in_flight = 0
        self._refusals = refusals

    def reserve(self, size: int, context: Any) -> Reservation:
        """Hold ``size`` bytes until the call ends; UNAVAILABLE OVERLOADED past the budget."""
        reservation = Reservation(self)
        reservation.resize(size)
        context.add_done_callback(lambda _: reservation.release())
        return reservation

    def _take(self, size: int) -> None:
        if size > 0 and self.in_flight + size > self.limit:
            self._refusals.note(
                "reply_bytes", "max_reply_bytes_in_flight", "replies waiting for slow readers"
            )
            raise Unavailable(
                "the vault is overloaded (replies waiting for slow clients); retry later",
                reason=Reason.OVERLOADED,
                retry_delay=1.0,
            )
        self.in_flight += size


class Reservation:
    """Bytes one reply holds in a :class:`ReplyBudget` (first an estimate, then exact)."""

    def __init__(self, budget: ReplyBudget) -> None:
        self.budget = budget
        self.size = 0
        self.released = False

    def resize(self, size: int) -> None:
        if self.released:
            return
        self.budget._take(size - self.size)
        self.size = size

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.budget.in_flight -= self.size


class Budget:
    """A count of things held at once, refused (never queued) past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def try_acquire(self) -> bool:
        if self.held >= self.limit:
            return False
        self.held += 1
        return True

    def release(self) -> None:
        self.held -= 1


async def receive_one(requests: AsyncIterable[Any], deadline: float) -> Any:
    """The single request message of a unary method, by ``deadline`` (monotonic)."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await receive_message(requests)
    except TimeoutError:
        raise receive_timed_out() from None


def receive_timed_out() -> DeadlineExceeded:
    return DeadlineExceeded(
        "the request message did not arrive in time", reason=Reason.DEADLINE_EXCEEDED
    )


async def receive_message(requests: AsyncIterable[Any]) -> Any:
    """The single request message of a unary method (the caller bounds the wait).

    grpc's request iterator is an async generator left suspended after the one message:
    it is closed here, at once, rather than by the event loop's finaliser hook when it is
    collected (which wakes the loop through its self-pipe and runs a task per call)."""
    iterator = aiter(requests)
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        raise InvalidArgument("the request message is missing") from None
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()


async def abort(context: Any, error: VaultError) -> None:
    request_id = uuid.uuid4().hex
    status = status_for(error, request_id)
    await context.abort(
        status.code, status.details, (*status.trailing_metadata, ("x-request-id", request_id))
    )


Behavior = Callable[[Any, Any], Any]


class FrontDoor:
    """The budgets of one server process (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.refused = Refusals()
        self.admission = Admission(
            settings.max_concurrent_rpcs,
            settings.max_queued_rpcs,
            settings.max_queue_wait,
            adaptive=settings.adaptive_concurrency,
        )
        self.streams = Budget(settings.max_streams)
        self.replies = ReplyBudget(settings.max_reply_bytes_in_flight, self.refused)

    def channel_options(self) -> list[tuple[str, int]]:
        """grpc server options: streams per connection, keepalive, connection idle and age."""
        s = self.settings
        return [
            ("grpc.max_concurrent_streams", s.max_streams_per_connection),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.max_connection_idle_ms", int(s.max_connection_idle * 1000)),
            ("grpc.max_connection_age_ms", int(s.max_connection_age * 1000)),
            ("grpc.max_connection_age_grace_ms", int((s.rpc_timeout_cap + 5) * 1000)),
        ]

    def receive_deadline(self, started: float) -> float:
        return started + self.settings.receive_timeout

    def precheck(self, deadline: float) -> None:
        """Shed the current call before its request message is read when admission would
        shed it anyway (the cheapest refusal: an overloaded process reads nothing more)."""
        call = current_call.get(None)
        try:
            self.admission.precheck(deadline, call.principal if call else "")
        except Unavailable:
            self.refused.note("overloaded", "max_concurrent_rpcs/max_queued_rpcs", "overload")
            raise

    async def admit(self, deadline: float) -> float:
        """Take an admission slot for the current call (its principal takes fair turns),
        counting OVERLOADED refusals; the result goes back to :meth:`dismiss` exactly once.
        The gRPC hot path uses this pair: no context-manager objects per call."""
        call = current_call.get(None)
        try:
            return await self.admission.acquire(deadline, call.principal if call else "")
        except Unavailable as exc:
            if exc.reason is Reason.OVERLOADED:
                self.refused.note("overloaded", "max_concurrent_rpcs/max_queued_rpcs", "overload")
            raise

    def dismiss(self, granted: float) -> None:
        self.admission.release(granted)

    @contextlib.asynccontextmanager
    async def admitted(self, deadline: float) -> AsyncIterator[None]:
        granted = await self.admit(deadline)
        try:
            yield
        finally:
            self.dismiss(granted)

    def open_method(self, method: str, handler: Any) -> Any:
        """Health and reflection: no token, no admission queue; streams capped; the request
        message of a unary-request method bounded in time like every other call's."""
        streaming = method in STREAMING_OPEN_METHODS
        if handler.request_streaming:
            inner_stream: Behavior = handler.stream_stream or handler.stream_unary

            async def stream_behavior(requests: Any, context: Any) -> Any:
                if not self.streams.try_acquire():
                    return await self._refuse_stream(context)
                try:
                    return await _run(inner_stream(requests, context), context)
                finally:
                    self.streams.release()

            return _handler(handler, stream_behavior, response_streaming=True)

        inner: Behavior = handler.unary_stream or handler.unary_unary

        async def behavior(requests: Any, context: Any) -> Any:
            started = time.monotonic()
            if streaming and not self.streams.try_acquire():
                return await self._refuse_stream(context)
            try:
                try:
                    request = await receive_one(requests, self.receive_deadline(started))
                except VaultError as exc:
                    return await abort(context, exc)
                return await _run(inner(request, context), context)
            finally:
                if streaming:
                    self.streams.release()

        return _handler(handler, behavior, response_streaming=handler.response_streaming)

    async def _refuse_stream(self, context: Any) -> None:
        self.refused.note("streams", "max_streams", "too many Health/Watch or reflection streams")
        await abort(
            context,
            ResourceExhausted(
                f"too many open streams (at most {self.streams.limit}); retry later",
                reason=Reason.RESOURCE_EXHAUSTED,
            ),
        )


async def _run(result: Any, context: Any) -> Any:
    """Await a handler's coroutine, or write out what its async generator yields."""
    if inspect.isasyncgen(result):
        async for response in result:
            await context.write(response)
        return None
    if inspect.isawaitable(result):
        return await result
    return result


def _handler(
    handler: Any, behavior: Callable[..., Awaitable[Any]], response_streaming: bool
) -> Any:
    make = (
        grpc.stream_stream_rpc_method_handler
        if response_streaming
        else grpc.stream_unary_rpc_method_handler
    )
    return make(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
