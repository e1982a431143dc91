"""Goodput and a bystander's latency under overload, with and without admission limits.

Run with ``python -m tests.bench.bench_overload``. It starts its own embedded Postgres
and, for each configuration, a vault in a child process (so the load generator does not
share the server's event loop). Load is closed-loop ResolveTemplate calls with a short
deadline at 1x and 10x a base concurrency, spread over connections of 50 calls; a
bystander (another principal, its own token) makes one call at a time beside them, from
its own process. Configurations: "unlimited" (admission limits set huge: the behaviour
before the front door), "limited" (the defaults) and "adaptive" (the defaults with the
adaptive concurrency limit). Clients shed with OVERLOADED retry after 50 ms, or
(``--polite``) after the RetryInfo delay. Printed: goodput (calls answered OK within
their deadline, per second), how many were shed (UNAVAILABLE OVERLOADED) and their median
answer time, how many timed out, every other failure (counted by gRPC code and ErrorInfo
reason, listed below the table), and the bystander's p50/p99 of successful calls. A
script, not a test: numbers, not assertions. On a shared machine the numbers swing widely
between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rpbg
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as spbg

from vaultsvc.auth import ADMIN, RESOLVER, TokenEntry, hash_token, new_token
from vaultsvc.config import DatabaseSettings, Settings
from vaultsvc.crypto import generate_master_key, parse_master_keys
from vaultsvc.server import start_server, stop_server
from vaultsvc.storage.embedded import EmbeddedPostgres

PER_CONNECTION = 50
ROLES = {"admin": ADMIN, "load": RESOLVER, "bystander": RESOLVER}
"""Principals: the load and the bystander are different tools (their own tokens)."""
HUGE = {
    "max_concurrent_rpcs": 100_000,
    "max_queued_rpcs": 100_000,
    "max_queue_wait": 30.0,
    "adaptive_concurrency": False,
}
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "unlimited": HUGE,
    "limited": {},
    "adaptive": {"adaptive_concurrency": True},
}


@dataclass(frozen=True)
class Options:
    base_concurrency: int = 30
    seconds: float = 8.0
    deadline: float = 0.5
    polite: bool = False
    """Clients wait the RetryInfo delay (with jitter) after OVERLOADED, not just 50 ms."""
    only: tuple[str, ...] = ()
    """Run only these configurations (all when empty)."""


def _serve(url: str, tokens: dict[str, str], limits: dict[str, Any], ready: Any) -> None:
    key_id, key = generate_master_key()
    settings = Settings(
        listen="127.0.0.1:0",
        database=DatabaseSettings(url=url),
        keyring=parse_master_keys(f"{key_id}:{key}"),
        tokens=tuple(
            TokenEntry(principal=f"bench-{name}", role=ROLES[name], sha256=hash_token(t))
            for name, t in tokens.items()
        ),
        log_level="ERROR",
    )
    settings = replace(settings, **limits)

    async def main() -> None:
        runtime = await start_server(settings)
        ready.send(runtime.address)
        await asyncio.Event().wait()
        await stop_server(runtime)

    asyncio.run(main())


@dataclass
class Tally:
    ok: int = 0
    shed: int = 0
    late: int = 0
    other: collections.Counter[str] = field(default_factory=collections.Counter)
    """Every other failure, by ``CODE REASON`` (e.g. ``UNAVAILABLE AUDIT_UNAVAILABLE``)."""
    shed_latency: list[float] = field(default_factory=list)
    """Milliseconds from sending a call to its OVERLOADED answer."""


def _retry_delay(err: grpc.aio.AioRpcError) -> float:
    """The RetryInfo delay of a vault error, in seconds (0 when there is none)."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToTimedelta().total_seconds()
    return 0.0


def _reason(err: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a vault error ("-" when there is none: a grpc-made status)."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return "-"


async def _load(
    stub: rpbg.ResolverServiceStub,
    request: Any,
    until: float,
    deadline: float,
    tally: Tally,
    polite: bool,
) -> None:
    while time.monotonic() < until:
        sent = time.monotonic()
        try:
            await stub.ResolveTemplate(request, timeout=deadline)
            tally.ok += 1
        except grpc.aio.AioRpcError as err:
            reason = _reason(err)
            if err.code() == grpc.StatusCode.UNAVAILABLE and reason == "OVERLOADED":
                tally.shed += 1
                tally.shed_latency.append((time.monotonic() - sent) * 1000)
                # A harsh client backs off briefly, not for the whole RetryInfo delay; a
                # polite one waits that delay, with jitter.
                pause = _retry_delay(err) * random.uniform(0.5, 1.5) if polite else 0.0
                await asyncio.sleep(max(pause, 0.05))
            elif err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                tally.late += 1
            else:
                tally.other[f"{err.code().name} {reason}"] += 1
                if reason == "-":
                    tally.other[f"  ({err.details()})"] += 1
                await asyncio.sleep(0.05)


def _request() -> Any:
    return rpb.ResolveTemplateRequest(
        fields=[
            rpb.TemplateField(
                key=f"f{i}",
                template=f"Bearer {{{{secret:s{i % 5}}}}}",
                encoding=rpb.ENCODING_HEADER,
            )
            for i in range(20)
        ],
        tool="bench",
    )


async def _bystander(address: str, token: str, until: float) -> list[float]:
    """One call at a time (5 s deadline) until the wall clock reaches ``until``."""
    metadata = (("authorization", f"Bearer {token}"),)
    latencies: list[float] = []
    request = _request()
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        stub = rpbg.ResolverServiceStub(channel)
        while time.time() < until:
            started = time.monotonic()
            try:
                await stub.ResolveTemplate(request, timeout=5, metadata=metadata)
                latencies.append((time.monotonic() - started) * 1000)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.02)
    return latencies


def _bystander_process(address: str, token: str, until: float, results: Any) -> None:
    """The bystander in its own process: its latency is the server's, not the load
    generator's busy event loop."""
    results.send(asyncio.run(_bystander(address, token, until)))


async def _measure(
    address: str, token: str, bystander_token: str, concurrency: int, opts: Options
) -> tuple[str, collections.Counter[str]]:
    metadata = (("authorization", f"Bearer {token}"),)
    # Callers spread over connections of at most PER_CONNECTION calls each, as many clients
    # would be: channels to one address otherwise share one connection, whose 128-stream
    # cap (max_streams_per_connection) refuses the excess as UNAVAILABLE RST_STREAM.
    count = -(-concurrency // PER_CONNECTION)
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(count)
    ]
    stubs = [rpbg.ResolverServiceStub(c) for c in channels]
    request = _request()

    class Stub:
        def __init__(self, inner: rpbg.ResolverServiceStub) -> None:
            self.inner = inner

        async def ResolveTemplate(self, req: Any, timeout: float) -> Any:
            return await self.inner.ResolveTemplate(req, timeout=timeout, metadata=metadata)

    tally = Tally()
    receive, send = multiprocessing.get_context("spawn").Pipe(duplex=False)
    bystander = multiprocessing.get_context("spawn").Process(
        target=_bystander_process, args=(address, bystander_token, time.time() + opts.seconds, send)
    )
    bystander.start()
    until = time.monotonic() + opts.seconds
    started = time.monotonic()
    await asyncio.gather(
        *(
            _load(Stub(stubs[i % count]), request, until, opts.deadline, tally, opts.polite)  # type: ignore[arg-type]
            for i in range(concurrency)
        )
    )
    elapsed = time.monotonic() - started
    latencies: list[float] = await asyncio.to_thread(receive.recv)
    bystander.join(10)
    for channel in channels:
        await channel.close()
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 20 else float("nan")
    shed_p50 = statistics.median(tally.shed_latency) if tally.shed_latency else float("nan")
    line = (
        f"{tally.ok / elapsed:9.0f} {tally.shed:7d} {shed_p50:8.1f} {tally.late:7d} "
        f"{sum(tally.other.values()):6d} {p50:10.1f} {p99:10.1f}"
    )
    return line, tally.other


async def _seed(address: str, token: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = spbg.SecretServiceStub(channel)
        for i in range(5):
            await stub.CreateSecret(
                spb.CreateSecretRequest(name=f"s{i}", value=f"value-{i}" * 8),
                metadata=(("authorization", f"Bearer {token}"),),
            )


def run(opts: Options) -> None:
    base = Path(tempfile.mkdtemp(prefix="vaultsvc-bench-overload-"))
    pg = EmbeddedPostgres(base)
    pg.start()
    context = multiprocessing.get_context("spawn")
    others: dict[str, collections.Counter[str]] = {}
    try:
        print(
            f"{'limits':10} {'load':>5} {'conc':>5} {'goodput/s':>9} {'shed':>7} "
            f"{'shed p50':>8} {'late':>7} {'other':>6} {'by p50 ms':>10} {'by p99 ms':>10}"
        )
        for label, limits in CONFIGURATIONS.items():
            if opts.only and label not in opts.only:
                continue
            pg.ensure_database(f"bench_{label}")
            tokens = {name: new_token() for name in ROLES}
            receive, send = context.Pipe(duplex=False)
            child = context.Process(
                target=_serve, args=(pg.uri(f"bench_{label}"), tokens, limits, send)
            )
            child.start()
            try:
                address = receive.recv()
                asyncio.run(_seed(address, tokens["admin"]))
                for factor in (1, 10):
                    concurrency = opts.base_concurrency * factor
                    line, other = asyncio.run(
                        _measure(address, tokens["load"], tokens["bystander"], concurrency, opts)
                    )
                    print(f"{label:10} {factor:>4}x {concurrency:5d} {line}", flush=True)
                    others[f"{label} {factor}x"] = other
            finally:
                child.terminate()
                child.join(10)
        print("other failures by code and reason:")
        for run_label, other in others.items():
            listed = ", ".join(f"{k}: {n}" for k, n in other.most_common()) or "none"
            print(f"  {run_label:14} {listed}")
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-concurrency", type=int, default=Options.base_concurrency)
    parser.add_argument("--seconds", type=float, default=Options.seconds)
    parser.add_argument("--deadline", type=float, default=Options.deadline)
    parser.add_argument(
        "--polite", action="store_true", help="clients honour RetryInfo after OVERLOADED"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        choices=sorted(CONFIGURATIONS),
        help="run only this configuration (repeatable)",
    )
    args = parser.parse_args(argv)
    run(Options(args.base_concurrency, args.seconds, args.deadline, args.polite, tuple(args.only)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
