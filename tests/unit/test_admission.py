"""Admission decisions (vaultsvc.api.frontdoor.Admission) with a fake clock."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from vaultsvc.api.frontdoor import (
    LIMIT_FLOOR,
    LIMIT_WARMUP,
    LIMIT_WINDOW,
    STANDING_INTERVAL,
    STANDING_TARGET,
    Admission,
)
from vaultsvc.errors import Reason, Unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _hold(admission: Admission, deadline: float, release: asyncio.Event) -> None:
    async with admission.slot(deadline):
        await release.wait()


async def _served(admission: Admission, clock: Clock, took: float) -> None:
    """One call admitted at once that holds its slot ``took`` seconds of fake time."""
    async with admission.slot(clock.now + 10):
        clock.now += took


async def test_service_time_is_an_ewma_of_admitted_durations() -> None:
    clock = Clock()
    admission = Admission(limit=4, max_queued=10, max_wait=1.0, clock=clock)
    assert admission.service_time == 0.0
    await _served(admission, clock, 0.1)
    assert admission.service_time == pytest.approx(0.1)  # the first sample is taken whole
    await _served(admission, clock, 0.6)
    assert admission.service_time == pytest.approx(0.1 + 0.2 * 0.5)
    assert admission.expected_wait(8) == pytest.approx(0.2 * 8 / 4)


async def test_a_deadline_shorter_than_the_expected_wait_is_shed_at_once() -> None:
    clock = Clock()
    admission = Admission(limit=1, max_queued=10, max_wait=5.0, clock=clock)
    await _served(admission, clock, 0.2)  # service time 0.2 s
    release = asyncio.Event()
    running = asyncio.ensure_future(_hold(admission, clock.now + 10, release))
    await asyncio.sleep(0)
    assert admission.running == 1
    # Next in line: 0.2 s wait + 0.2 s service; a 0.3 s budget cannot make it.
    with pytest.raises(Unavailable) as caught:
        async with admission.slot(clock.now + 0.3):
            pytest.fail("must not be admitted")
    assert caught.value.reason is Reason.OVERLOADED
    assert caught.value.retry_delay is not None and caught.value.retry_delay > 0
    assert admission.queued == 0  # refused without queueing
    # A 1 s budget can: it queues, and runs once the slot frees.
    queued = asyncio.ensure_future(_hold(admission, clock.now + 1.0, asyncio.Event()))
    await asyncio.sleep(0)
    assert admission.queued == 1
    # The third in line would need 0.4 s wait + 0.2 s service: 0.5 s is not enough.
    with pytest.raises(Unavailable):
        async with admission.slot(clock.now + 0.5):
            pytest.fail("must not be admitted")
    release.set()
    await running
    await asyncio.sleep(0)
    assert admission.running == 1 and admission.queued == 0
    queued.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await queued
    assert admission.running == 0


async def test_a_full_queue_sheds_at_once() -> None:
    clock = Clock()
    admission = Admission(limit=1, max_queued=2, max_wait=5.0, clock=clock)
    release = asyncio.Event()
    tasks = [asyncio.ensure_future(_hold(admission, clock.now + 10, release)) for _ in range(3)]
    await asyncio.sleep(0)
    assert admission.running == 1 and admission.queued == 2
    with pytest.raises(Unavailable, match="queue full"):
        async with admission.slot(clock.now + 10):
            pytest.fail("must not be admitted")
    release.set()
    await asyncio.gather(*tasks)
    assert admission.running == 0 and admission.queued == 0


async def test_a_standing_queue_gives_new_arrivals_only_the_target_wait() -> None:
    clock = Clock()
    admission = Admission(limit=1, max_queued=10, max_wait=2.0, clock=clock)
    release = asyncio.Event()
    running = asyncio.ensure_future(_hold(admission, clock.now + 10, release))
    await asyncio.sleep(0)
    assert not admission.standing()
    assert admission.allowed_wait(clock.now + 10) == pytest.approx(2.0)
    first = asyncio.ensure_future(_hold(admission, clock.now + 10, release))
    await asyncio.sleep(0)
    clock.now += STANDING_INTERVAL / 2
    assert not admission.standing()
    clock.now += STANDING_INTERVAL
    assert admission.standing()  # non-empty for longer than the interval
    assert admission.allowed_wait(clock.now + 10) == pytest.approx(STANDING_TARGET)
    release.set()
    await asyncio.gather(running, first)
    assert not admission.standing()  # drained: back to max_wait
    assert admission.allowed_wait(clock.now + 10) == pytest.approx(2.0)


async def test_a_queued_call_gives_up_when_its_allowed_wait_ends() -> None:
    admission = Admission(limit=1, max_queued=10, max_wait=0.05)
    release = asyncio.Event()
    running = asyncio.ensure_future(_hold(admission, 1e12, release))
    await asyncio.sleep(0)
    with pytest.raises(Unavailable, match="queued too long"):
        async with admission.slot(1e12):
            pytest.fail("must not be admitted")
    assert admission.queued == 0
    release.set()
    await running
    assert admission.running == 0


async def _hold_as(
    admission: Admission, key: str, release: asyncio.Event, order: list[str]
) -> None:
    async with admission.slot(1e12, key):
        order.append(key)
        await release.wait()


async def test_waiting_calls_take_turns_by_principal() -> None:
    admission = Admission(limit=1, max_queued=5, max_wait=60.0)
    release = asyncio.Event()
    order: list[str] = []
    running = asyncio.ensure_future(_hold(admission, 1e12, release))
    await asyncio.sleep(0)
    flood = [
        asyncio.ensure_future(_hold_as(admission, "flooder", release, order)) for _ in range(5)
    ]
    await asyncio.sleep(0)
    assert admission.queued == 5  # the queue is full...
    with pytest.raises(Unavailable, match="queue full"):
        async with admission.slot(1e12, "flooder"):
            pytest.fail("must not be admitted")
    # ...for the flooder; a principal with nothing waiting still queues its one call.
    bystander = asyncio.ensure_future(_hold_as(admission, "bystander", release, order))
    await asyncio.sleep(0)
    assert admission.queued == 6
    release.set()
    await asyncio.gather(running, *flood, bystander)
    # Granted in turns: the bystander second, not behind the whole flood.
    assert order == ["flooder", "bystander", "flooder", "flooder", "flooder", "flooder"]
    assert admission.running == 0 and admission.queued == 0


async def test_a_new_principal_expects_a_short_wait_behind_a_flood() -> None:
    clock = Clock()
    admission = Admission(limit=1, max_queued=100, max_wait=60.0, clock=clock)
    await _served(admission, clock, 0.1)
    release = asyncio.Event()
    tasks = [asyncio.ensure_future(_hold_as(admission, "flooder", release, [])) for _ in range(9)]
    await asyncio.sleep(0)
    assert admission.queued == 8
    assert admission.position("flooder") == 9
    assert admission.position("bystander") == 2  # behind one turn of the flooder
    # 9 x 0.1 s of waiting cannot fit in 0.5 s; 2 x 0.1 s can.
    with pytest.raises(Unavailable):
        async with admission.slot(clock.now + 0.5, "flooder"):
            pytest.fail("must not be admitted")
    bystander = asyncio.ensure_future(admission.slot(clock.now + 0.5, "bystander").__aenter__())
    await asyncio.sleep(0)
    assert admission.queued_for("bystander") == 1
    bystander.cancel()
    release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await bystander
    await asyncio.gather(*tasks)
    assert admission.running == 0 and admission.queued == 0


async def test_the_limit_shrinks_when_service_time_rises_and_recovers() -> None:
    clock = Clock()
    admission = Admission(limit=64, max_queued=10, max_wait=1.0, clock=clock, adaptive=True)
    for _ in range(LIMIT_WARMUP + 4 * LIMIT_WINDOW):
        await _served(admission, clock, 0.01)
    assert admission.limit == 64  # fast: stays at the ceiling
    for _ in range(40 * LIMIT_WINDOW):
        await _served(admission, clock, 0.2)  # 20x the unloaded service time
    assert LIMIT_FLOOR <= admission.limit <= 2 * LIMIT_FLOOR
    for _ in range(80 * LIMIT_WINDOW):
        await _served(admission, clock, 0.01)  # fast again: back to the ceiling, gradually
    assert admission.limit == 64
    fixed = Admission(limit=64, max_queued=10, max_wait=1.0, clock=clock, adaptive=False)
    for _ in range(LIMIT_WARMUP + 4 * LIMIT_WINDOW):
        await _served(fixed, clock, 0.01)
    for _ in range(40 * LIMIT_WINDOW):
        await _served(fixed, clock, 0.2)
    assert fixed.limit == 64
