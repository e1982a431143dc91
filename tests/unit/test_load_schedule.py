"""The load tool's scheduler: open-loop latency from intended start times, slot accounting.

A virtual clock makes the accounting exact: the fake call advances the clock by
its duration, the fake sleep by what it was asked, so every latency is known in
advance and nothing depends on this machine's speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from vaultsvc_client.load.schedule import Plan, WorkerPool
from vaultsvc_client.load.stats import ErrorKey, LatencyHistogram, Recorder


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class Capture(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.latencies: list[float] = []

    def success(self, seconds: float) -> None:
        self.latencies.append(seconds)
        super().success(seconds)


def slow_call(
    clock: VirtualClock, seconds: float, log: list[float] | None = None
) -> Callable[[int], Awaitable[None]]:
    async def call(worker: int) -> None:
        if log is not None:
            log.append(clock.now)
        clock.now += seconds
        await asyncio.sleep(0)

    return call


def never_fails(exc: Exception) -> ErrorKey:
    raise AssertionError(f"unexpected failure: {exc!r}")


async def test_open_loop_latency_counts_from_the_intended_start_when_calls_run_late() -> None:
    clock = VirtualClock()
    recorder = Capture()
    starts: list[float] = []
    # 10 calls/s intended (every 0.1 s) but each call takes 0.25 s with one worker:
    # call k starts at 0.25 k, intended at 0.1 k, ends at 0.25 (k + 1).
    pool = WorkerPool(
        Plan(concurrency=1, total=5, rate=10.0),
        slow_call(clock, 0.25, starts),
        never_fails,
        recorder,
        clock=clock,
        sleep=clock.sleep,
    )
    await pool.run()
    assert starts == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert recorder.latencies == pytest.approx([0.25 + 0.15 * k for k in range(5)])
    assert clock.sleeps == []  # never early, so never waiting
    # The histogram holds the same, to HDR's 3 significant digits.
    summary = recorder.histogram.summary_ms()
    assert summary["count"] == 5
    assert summary["min"] == pytest.approx(250.0, rel=1e-3)
    assert summary["max"] == pytest.approx(850.0, rel=1e-3)


async def test_closed_loop_latency_counts_from_the_actual_start() -> None:
    clock = VirtualClock()
    recorder = Capture()
    pool = WorkerPool(
        Plan(concurrency=1, total=5),
        slow_call(clock, 0.25),
        never_fails,
        recorder,
        clock=clock,
        sleep=clock.sleep,
    )
    await pool.run()
    assert recorder.latencies == pytest.approx([0.25] * 5)
    assert pool.planned is None and pool.missed == 0


async def test_open_loop_waits_for_each_slot_when_the_server_keeps_up() -> None:
    clock = VirtualClock()
    recorder = Capture()
    starts: list[float] = []
    pool = WorkerPool(
        Plan(concurrency=1, total=4, rate=10.0),
        slow_call(clock, 0.05, starts),
        never_fails,
        recorder,
        clock=clock,
        sleep=clock.sleep,
    )
    await pool.run()
    assert starts == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert recorder.latencies == pytest.approx([0.05] * 4)


async def test_slots_not_started_within_the_grace_are_missed_not_run() -> None:
    clock = VirtualClock()
    recorder = Capture()
    # 1 s at 10/s = 10 slots; calls take 0.3 s, so slot k starts at 0.3 k; the run
    # stops starting calls 0.5 s after its end: slots 0..5 run, 6..9 are missed.
    pool = WorkerPool(
        Plan(concurrency=1, duration=1.0, rate=10.0, grace=0.5),
        slow_call(clock, 0.3),
        never_fails,
        recorder,
        clock=clock,
        sleep=clock.sleep,
    )
    await pool.run()
    assert pool.planned == 10
    assert recorder.ok == 6
    assert pool.missed == 4
    assert recorder.ok + pool.missed == pool.planned
    assert recorder.latencies[-1] == pytest.approx(1.8 - 0.5)


async def test_with_real_time_a_slow_call_never_hides_its_queueing() -> None:
    """Lower bounds only: a slower machine can only make latencies larger."""
    recorder = Capture()

    async def call(worker: int) -> None:
        await asyncio.sleep(0.05)

    # 100/s intended (every 10 ms), one worker, 50 ms per call: call k cannot end
    # before 50 (k + 1) ms and was intended at 10 k ms.
    pool = WorkerPool(Plan(concurrency=1, total=6, rate=100.0), call, never_fails, recorder)
    await pool.run()
    assert len(recorder.latencies) == 6
    for k, latency in enumerate(recorder.latencies):
        assert latency >= 0.05 + 0.04 * k - 0.002, (k, latency)


async def test_failures_are_counted_by_key_and_kept_out_of_the_histogram() -> None:
    clock = VirtualClock()
    recorder = Capture()
    calls = 0

    async def flaky(worker: int) -> None:
        nonlocal calls
        calls += 1
        clock.now += 0.01
        if calls % 3 == 0:
            raise ConnectionError("down")

    pool = WorkerPool(
        Plan(concurrency=4, total=30),
        flaky,
        lambda exc: ("UNAVAILABLE", type(exc).__name__),
        recorder,
        clock=clock,
        sleep=clock.sleep,
    )
    await pool.run()
    assert calls == 30
    assert recorder.ok + recorder.failed == 30
    assert recorder.failed == 10
    assert dict(recorder.errors) == {("UNAVAILABLE", "ConnectionError"): 10}
    assert recorder.histogram.count == 20


async def test_total_is_exact_with_many_workers() -> None:
    recorder = Recorder()

    async def call(worker: int) -> None:
        await asyncio.sleep(0)

    pool = WorkerPool(Plan(concurrency=7, total=101), call, never_fails, recorder)
    await pool.run()
    assert recorder.ok == 101 and pool.started == 101


async def test_stop_ends_the_run_and_drops_calls_in_flight() -> None:
    recorder = Recorder()
    stop = asyncio.Event()
    started = 0

    async def call(worker: int) -> None:
        nonlocal started
        started += 1
        if started == 5:
            stop.set()
        await asyncio.sleep(0.01 if started < 5 else 3600)

    pool = WorkerPool(Plan(concurrency=1, duration=3600.0), call, never_fails, recorder)
    await asyncio.wait_for(pool.run(stop=stop), timeout=30)
    assert recorder.ok == 4 and recorder.failed == 0


@pytest.mark.parametrize(
    ("plan_args", "expected"),
    [
        ({"total": 10}, 10),
        ({"total": 7}, 7),
        ({"duration": 2.0, "rate": 50.0}, 100),
        ({"duration": 1.0, "rate": 0.3}, 1),
        ({"duration": 10.0, "rate": 0.3}, 3),
        ({"duration": 0.5, "rate": 7.0}, 4),
    ],
)
@pytest.mark.parametrize("stride", [1, 2, 3, 4])
def test_processes_split_the_slots_exactly(
    plan_args: dict[str, float], expected: int, stride: int
) -> None:
    limits = []
    for phase in range(stride):
        plan = Plan(concurrency=1, phase=phase, stride=stride, **plan_args)  # type: ignore[arg-type]
        limit = plan.slot_limit()
        assert limit is not None
        limits.append(limit)
        if plan.rate is not None:
            assert all(plan.slot_offset(k) < plan_args["duration"] for k in range(limit))
    assert sum(limits) == expected
    assert max(limits) - min(limits) <= 1


def test_plan_rejects_contradictions() -> None:
    with pytest.raises(ValueError):
        Plan(concurrency=1)
    with pytest.raises(ValueError):
        Plan(concurrency=1, total=5, duration=1.0)
    with pytest.raises(ValueError):
        Plan(concurrency=0, total=5)
    with pytest.raises(ValueError):
        Plan(concurrency=1, total=5, phase=2, stride=2)


def test_encoded_histograms_merge_to_the_sum() -> None:
    first, second, merged = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for ms in range(1, 102):
        first.record(ms / 1000)
    for ms in range(901, 1001):
        second.record(ms / 1000)
    merged.add_encoded(first.encode())
    merged.add_encoded(second.encode())
    summary = merged.summary_ms()
    assert summary["count"] == first.count + second.count == 201
    assert summary["min"] == pytest.approx(1.0, rel=1e-3)
    assert summary["max"] == pytest.approx(1000.0, rel=1e-3)
    assert summary["p50"] == pytest.approx(101.0, rel=1e-2)  # the 101st of 201
    assert LatencyHistogram().summary_ms()["p99"] is None
