"""One process's share of the load: its channels, its workers, its recorder.

The hot path is a raw ``ResolverServiceStub`` method on a ``grpc.aio`` channel:
no client wrapper, no retries (a load test must see every failure), a
prebuilt request where possible, and the call's deadline on every call.
Channels are built with the client's own rules (``channel_security``: TLS
unless loopback or asked otherwise, the same channel options); each
connection gets its own subchannel pool, so N channels are N TCP connections.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc import aio
from interakt.vault.v1 import resolver_service_pb2_grpc as resolver_grpc

from .._common import CHANNEL_OPTIONS, auth_metadata, channel_security
from ..errors import error_from_rpc_error
from .options import LoadOptions, shares
from .scenario import RequestFactory, Scenario
from .schedule import Plan, WorkerPool
from .stats import ErrorKey, ProcessResult, Recorder

__all__ = ["ProcessJob", "ProcessRun", "SetupError", "classify", "jobs_for", "open_channels"]


class SetupError(Exception):
    """The run could not start (no connection); one line for the user."""


def open_channels(options: LoadOptions, count: int) -> list[aio.Channel]:
    """``count`` channels to the vault, each on its own connection."""
    security = channel_security(options.address, options.tls, options.insecure)
    channels: list[aio.Channel] = []
    for _ in range(count):
        channel_options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        if security is None:
            channels.append(aio.insecure_channel(options.address, options=channel_options))
        else:
            channels.append(
                aio.secure_channel(
                    options.address,
                    security.credentials(),
                    options=channel_options + security.channel_options(),
                )
            )
    return channels


async def connect(channels: list[aio.Channel], address: str, timeout: float) -> None:
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(channel.channel_ready() for channel in channels))
    except TimeoutError:
        raise SetupError(f"cannot connect to {address} within {timeout:g} s") from None


def classify(exc: Exception) -> ErrorKey:
    """(code, reason) of a failed call: the status code, and the ``ErrorInfo.reason`` of
    the ``google.rpc.Status`` trailer as the client's errors module decodes it (the code
    name when there is none). Anything that is not an RPC error is ``CLIENT_ERROR``."""
    if isinstance(exc, grpc.RpcError):
        error = error_from_rpc_error(exc)
        return error.code.name, error.reason
    return "CLIENT_ERROR", type(exc).__name__


@dataclass(frozen=True)
class ProcessJob:
    """One process's part of a run (picklable: sent to spawned worker processes)."""

    options: LoadOptions
    scenario: Scenario
    pool: tuple[str, ...]
    index: int
    concurrency: int
    connections: int

    def plan(self) -> Plan:
        options = self.options
        return Plan(
            concurrency=self.concurrency,
            total=options.total,
            duration=options.duration,
            rate=options.rps,
            phase=self.index,
            stride=options.procs,
            grace=options.timeout,
        )


def jobs_for(options: LoadOptions, scenario: Scenario, pool: tuple[str, ...]) -> list[ProcessJob]:
    """Splits concurrency and connections over the processes (each gets at least one)."""
    workers = shares(options.concurrency, options.procs)
    connections = shares(options.connections, options.procs)
    return [
        ProcessJob(
            options=options,
            scenario=scenario,
            pool=pool,
            index=index,
            concurrency=workers[index],
            connections=max(1, min(connections[index], workers[index])),
        )
        for index in range(options.procs)
    ]


class ProcessRun:
    """Set up (connect), run, close: the same in the parent and in worker processes."""

    def __init__(self, job: ProcessJob) -> None:
        self.job = job
        options = job.options
        self.recorder = Recorder()
        self._channels = open_channels(options, job.connections)
        factory = RequestFactory(
            job.scenario,
            job.pool,
            options.names,
            options.tool,
            random.Random(),
        )
        methods = [
            resolver_grpc.ResolverServiceStub(channel).ResolveTemplate for channel in self._channels
        ]
        count = len(methods)
        metadata = auth_metadata(options.token)
        timeout = options.timeout
        next_request = factory.next

        async def call(worker: int) -> object:
            return await methods[worker % count](next_request(), metadata=metadata, timeout=timeout)

        self.pool = WorkerPool(job.plan(), call, classify, self.recorder)

    async def setup(self) -> None:
        await connect(self._channels, self.job.options.address, self.job.options.timeout)

    async def run(
        self,
        start: float | None,
        stop: asyncio.Event,
        tick: Callable[[float, Recorder], None] | None = None,
        interval: float = 0.25,
    ) -> ProcessResult:
        """Runs the plan; ``tick(elapsed, recorder)`` is called every ``interval`` seconds."""
        begin = time.perf_counter() if start is None else start

        async def ticker() -> None:
            while True:
                await asyncio.sleep(interval)
                if tick is not None:
                    tick(max(time.perf_counter() - begin, 0.0), self.recorder)

        ticking = asyncio.ensure_future(ticker())
        try:
            await self.pool.run(begin, stop)
        finally:
            ticking.cancel()
            await asyncio.gather(ticking, return_exceptions=True)
        if tick is not None:
            tick(self.pool.elapsed, self.recorder)
        return self.recorder.result(self.pool.elapsed, self.pool.planned, self.pool.missed)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(grace=None)
