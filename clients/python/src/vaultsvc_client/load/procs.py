"""``--procs N``: the load from N client processes, one asyncio loop each.

Processes are *spawned* (never forked: the parent may already hold gRPC
channels, e.g. for seeding, and gRPC does not survive a fork). Each connects,
says it is ready, and waits; the parent then gives them one common start time
(wall clock, converted by each child to its own monotonic clock), so their
open-loop schedules interleave into one grid. Children ignore SIGINT: the
parent alone handles Ctrl-C and tells them to stop. Progress counts come back
through shared memory, results (counts and the encoded HDR histogram) through
a queue; the parent merges them.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue as queue_module
import signal
import time
from collections.abc import Callable
from typing import Any

from .runner import ProcessJob, ProcessRun, SetupError
from .stats import ProcessResult

__all__ = ["ChildFailed", "run_processes"]

READY_TIMEOUT = 60.0
START_DELAY = 0.1
POLL = 0.05


class ChildFailed(Exception):
    """A worker process failed in an unexpected way; one line for the user."""


def _child_main(
    job: ProcessJob,
    messages: Any,
    go: Any,
    start_wall: Any,
    stop_flag: Any,
    counters: Any,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = asyncio.run(_child(job, messages, go, start_wall, stop_flag, counters))
    except SetupError as exc:
        messages.put(("setup", job.index, str(exc)))
    except Exception as exc:
        messages.put(("failed", job.index, f"{type(exc).__name__}: {exc}"))
    else:
        messages.put(("result", job.index, result))


async def _child(
    job: ProcessJob, messages: Any, go: Any, start_wall: Any, stop_flag: Any, counters: Any
) -> ProcessResult | None:
    run = ProcessRun(job)
    try:
        await run.setup()
        messages.put(("ready", job.index, None))
        deadline = time.monotonic() + READY_TIMEOUT
        while not go.is_set():
            if stop_flag.is_set() or time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.005)
        start = time.perf_counter() + max(0.0, start_wall.value - time.time())
        stop = asyncio.Event()

        async def watch_stop() -> None:
            # A multiprocessing.Event has no async wait; a blocking wait in a thread
            # would hold asyncio.run's exit until the parent sets it.
            while not stop_flag.is_set():  # noqa: ASYNC110
                await asyncio.sleep(POLL)
            stop.set()

        def publish(_: float, recorder: Any) -> None:
            counters[2 * job.index] = recorder.ok
            counters[2 * job.index + 1] = recorder.failed

        watcher = asyncio.ensure_future(watch_stop())
        try:
            return await run.run(start, stop, publish, interval=0.1)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    finally:
        await run.close()


async def run_processes(
    jobs: list[ProcessJob],
    stop: asyncio.Event,
    tick: Callable[[float, int, int], None],
    interval: float,
) -> list[ProcessResult]:
    """Runs every job in its own process; returns their results in job order.

    Raises :class:`SetupError` when a process cannot connect, :class:`ChildFailed`
    when one dies or fails. When ``stop`` is set, the processes stop and return
    what they have.
    """
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    go = context.Event()
    stop_flag = context.Event()
    start_wall = context.Value("d", 0.0, lock=False)
    counters = context.Array("q", 2 * len(jobs), lock=False)
    processes = [
        context.Process(
            target=_child_main,
            args=(job, messages, go, start_wall, stop_flag, counters),
            name=f"vaultctl-load-{job.index}",
            daemon=True,
        )
        for job in jobs
    ]
    results: dict[int, ProcessResult | None] = {}
    try:
        for process in processes:
            process.start()
        ready: set[int] = set()
        deadline = time.monotonic() + READY_TIMEOUT + jobs[0].options.timeout
        while len(ready) < len(jobs):
            exited = _exited(processes)
            for kind, index, payload in _drain(messages):
                if kind == "ready":
                    ready.add(index)
                else:
                    _raise_for(kind, index, payload)
            if stop.is_set():
                return []
            _check_alive(processes, exited - ready, "starting")
            if time.monotonic() > deadline:
                raise ChildFailed("worker processes did not start in time")
            await asyncio.sleep(POLL)

        start_wall.value = time.time() + START_DELAY
        go.set()
        begin = time.monotonic() + START_DELAY
        next_tick = begin + interval
        while len(results) < len(jobs):
            exited = _exited(processes)
            for kind, index, payload in _drain(messages):
                if kind == "result":
                    results[index] = payload
                else:
                    _raise_for(kind, index, payload)
            if stop.is_set():
                stop_flag.set()
            _check_alive(processes, exited - set(results), "running")
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + interval
                tick(
                    max(now - begin, 0.0),
                    sum(counters[2 * i] for i in range(len(jobs))),
                    sum(counters[2 * i + 1] for i in range(len(jobs))),
                )
            await asyncio.sleep(POLL)
    finally:
        stop_flag.set()
        for process in processes:
            await asyncio.to_thread(process.join, 10)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 5)
        messages.close()
    return [result for _, result in sorted(results.items()) if result is not None]


def _drain(messages: Any) -> list[tuple[str, int, Any]]:
    drained = []
    while True:
        try:
            drained.append(messages.get_nowait())
        except queue_module.Empty:
            return drained


def _raise_for(kind: str, index: int, payload: Any) -> None:
    if kind == "setup":
        raise SetupError(str(payload))
    raise ChildFailed(f"worker process {index} failed: {payload}")


def _exited(processes: list[Any]) -> set[int]:
    """Processes that have exited. Read before draining the queue: a process flushes its
    last message before it exits, so a drain after this sees what it sent."""
    return {index for index, process in enumerate(processes) if process.exitcode is not None}


def _check_alive(processes: list[Any], silent: set[int], stage: str) -> None:
    """Fails for a process that exited without sending what it owed."""
    for index in sorted(silent):
        raise ChildFailed(
            f"worker process {index} exited while {stage} (exit code {processes[index].exitcode})"
        )
