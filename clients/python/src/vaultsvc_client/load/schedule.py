"""The worker pool and its schedule: closed loop, or open loop at a fixed rate.

Closed loop (no ``rate``): each worker starts its next call when the last one
returns; latency runs from the actual start.

Open loop (``rate``): calls have *intended* start times on a fixed grid,
``start + (slot * stride + phase) / rate`` (``stride`` processes interleave
their slots through ``phase``). A worker takes the next slot, waits for its
time if it is early, and calls; when every worker was busy past a slot's
time, the call starts late, and its latency still counts from the intended
time. A server that stalls thus shows its stall in the percentiles instead of
silently slowing the client down (no coordinated omission). With a
``duration``, the slots are those whose intended time falls inside it; a
slot not started within one call deadline (``grace``) after the end is
counted as *missed* rather than run, so the run stays bounded.

The clock and the sleep are parameters, so the accounting is testable with a
virtual clock.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .stats import ErrorKey, Recorder

__all__ = ["Plan", "WorkerPool"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Call = Callable[[int], Awaitable[object]]
"""One call; its argument is the worker's index. Raising counts as a failed call."""
Classify = Callable[[Exception], ErrorKey]


@dataclass(frozen=True)
class Plan:
    """How much to send, for one process among ``stride`` (this one is number ``phase``).

    ``total`` and ``rate`` are for all processes together: this process makes
    the calls (slots) ``phase``, ``phase + stride``, ``phase + 2 * stride``...
    """

    concurrency: int
    total: int | None = None
    duration: float | None = None
    rate: float | None = None
    phase: int = 0
    stride: int = 1
    grace: float = 0.0

    def __post_init__(self) -> None:
        if (self.total is None) == (self.duration is None):
            raise ValueError("a plan has either a total or a duration")
        if self.concurrency < 1 or self.stride < 1 or not 0 <= self.phase < self.stride:
            raise ValueError("bad concurrency, stride or phase")
        if self.rate is not None and not self.rate > 0:
            raise ValueError("rate must be positive")

    def slot_offset(self, slot: int) -> float:
        """Open loop: seconds from the start to this process's slot number ``slot``."""
        assert self.rate is not None
        return (slot * self.stride + self.phase) / self.rate

    def slot_limit(self) -> int | None:
        """This process's number of slots, when it is fixed in advance."""
        if self.total is not None:
            return _share(self.total, self.phase, self.stride)
        if self.rate is not None and self.duration is not None:
            # Slots m = slot * stride + phase with m / rate < duration.
            span = round(self.duration * self.rate, 9)
            return _share(math.ceil(span), self.phase, self.stride)
        return None


def _share(global_count: int, phase: int, stride: int) -> int:
    """How many of 0..global_count-1 are congruent to phase modulo stride."""
    return max(0, (global_count - phase + stride - 1) // stride)


class WorkerPool:
    """Runs ``plan`` with ``plan.concurrency`` workers calling ``call``."""

    def __init__(
        self,
        plan: Plan,
        call: Call,
        classify: Classify,
        recorder: Recorder | None = None,
        *,
        clock: Clock = time.perf_counter,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.plan = plan
        self.recorder = recorder or Recorder()
        self._call = call
        self._classify = classify
        self._clock = clock
        self._sleep = sleep
        self._limit = plan.slot_limit()
        self._next_slot = 0
        self._start = 0.0
        self._end = math.inf
        self._missed = 0
        self._exhausted = False
        self.elapsed = 0.0
        self.last_finish = 0.0

    @property
    def started(self) -> int:
        """Slots handed to workers so far."""
        return self._next_slot

    async def run(self, start: float | None = None, stop: asyncio.Event | None = None) -> None:
        """Runs until the plan is done or ``stop`` is set (then in-flight calls are cancelled).

        ``start`` is the clock reading at which the run begins (default: now);
        processes of one run share it, so their open-loop grids interleave.
        """
        now = self._clock()
        self._start = now if start is None else start
        self.last_finish = self._start
        if self.plan.duration is not None:
            self._end = self._start + self.plan.duration
        if self._start > now:
            await self._sleep(self._start - now)
        workers = [asyncio.ensure_future(self._worker(i)) for i in range(self.plan.concurrency)]
        stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
        try:
            waiting: set[asyncio.Future[Any]] = set(workers)
            if stopper is not None:
                waiting.add(stopper)
            while True:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                waiting -= done
                for task in done:
                    if task is not stopper:
                        task.result()  # a worker's own failure (not a call's) ends the run
                if stopper is not None and stopper in done:
                    break
                if not (waiting - {stopper}):
                    break
        finally:
            for task in workers:
                task.cancel()
            if stopper is not None:
                stopper.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            if stopper is not None:
                await asyncio.gather(stopper, return_exceptions=True)
        self.elapsed = max(self.last_finish - self._start, 0.0)

    @property
    def missed(self) -> int:
        """Open loop with a duration: slots of the run that no worker started in time."""
        return self._missed

    @property
    def planned(self) -> int | None:
        return self._limit if self.plan.rate is not None else None

    def _take(self) -> int | None:
        """The next slot, or None when the plan has no more."""
        if self._exhausted:
            return None
        slot = self._next_slot
        if self._limit is not None and slot >= self._limit:
            self._exhausted = True
            return None
        if self.plan.rate is None and self.plan.duration is not None and self._clock() >= self._end:
            self._exhausted = True
            return None
        self._next_slot = slot + 1
        return slot

    async def _worker(self, index: int) -> None:
        plan = self.plan
        recorder = self.recorder
        call = self._call
        clock = self._clock
        open_loop = plan.rate is not None
        bounded = plan.duration is not None
        while True:
            slot = self._take()
            if slot is None:
                return
            if open_loop:
                begin = self._start + plan.slot_offset(slot)
                now = clock()
                if begin > now:
                    await self._sleep(begin - now)
                elif bounded and now > self._end + plan.grace:
                    # Too late to start: this and every later slot of the run are missed.
                    self._exhausted = True
                    assert self._limit is not None
                    self._missed = self._limit - slot
                    return
            else:
                begin = clock()
            try:
                await call(index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                recorder.error(self._classify(exc))
            else:
                recorder.success(clock() - begin)
            self.last_finish = max(self.last_finish, clock())
