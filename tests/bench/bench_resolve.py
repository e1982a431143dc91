"""ResolveTemplate throughput and latency, side by side with GetVaultStats.

Run with ``make bench-resolve`` (``python -m tests.bench.bench_resolve``). It starts
its own embedded Postgres and an in-process vault on 127.0.0.1, creates secrets, and
for templates referencing 1, 5 and 20 secrets runs ResolveTemplate and GetVaultStats
in interleaved rounds with the same concurrency, so both see the same machine,
database and moment. It prints absolute numbers and, more usefully, ratios against
the trivial RPC. Request counts, concurrency and total time are bounded; it never
runs longer than ``--budget`` seconds of measuring (default 90).

GetVaultStats is a one-row read, but like every non-resolve RPC its audit event is
written synchronously; a resolve's event goes through the write-behind buffer. Client
and server share one event loop, so the numbers are for comparison, not capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rpbg
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as spbg

from vaultsvc.auth import ADMIN, RESOLVER, TokenEntry, hash_token, new_token
from vaultsvc.config import DatabaseSettings, Settings
from vaultsvc.crypto import generate_master_key, parse_master_keys
from vaultsvc.logs import configure_logging
from vaultsvc.server import start_server, stop_server
from vaultsvc.storage.embedded import EmbeddedPostgres

RPC_TIMEOUT = 10.0


@dataclass(frozen=True)
class Options:
    requests: int = 2000
    concurrency: int = 16
    secret_counts: tuple[int, ...] = (1, 5, 20)
    rounds: int = 10
    warmup: int = 50
    budget: float = 90.0


@dataclass(frozen=True)
class Measured:
    count: int
    elapsed: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True)
class Row:
    secrets: int
    resolve: Measured
    stats: Measured

    @property
    def p50_ratio(self) -> float:
        return self.resolve.p50_ms / self.stats.p50_ms if self.stats.p50_ms > 0 else 0.0

    @property
    def p99_ratio(self) -> float:
        return self.resolve.p99_ms / self.stats.p99_ms if self.stats.p99_ms > 0 else 0.0

    @property
    def rps_ratio(self) -> float:
        return self.resolve.rps / self.stats.rps if self.stats.rps > 0 else 0.0


@dataclass(frozen=True)
class Report:
    options: Options
    rows: tuple[Row, ...]
    truncated: bool
    seconds: float

    def text(self) -> str:
        o = self.options
        lines = [
            f"ResolveTemplate vs GetVaultStats: {o.requests} requests each per template, "
            f"concurrency {o.concurrency}, {o.rounds} interleaved rounds, 127.0.0.1, "
            "in-process server + embedded Postgres",
            "",
            f"{'secrets':>7} | {'resolve rps':>11} {'p50 ms':>8} {'p99 ms':>8} | "
            f"{'stats rps':>9} {'p50 ms':>8} {'p99 ms':>8} | "
            f"{'p50 ratio':>9} {'p99 ratio':>9} {'rps ratio':>9}",
        ]
        for row in self.rows:
            r, s = row.resolve, row.stats
            lines.append(
                f"{row.secrets:>7} | {r.rps:>11.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} | "
                f"{s.rps:>9.0f} {s.p50_ms:>8.2f} {s.p99_ms:>8.2f} | "
                f"{row.p50_ratio:>9.2f} {row.p99_ratio:>9.2f} {row.rps_ratio:>9.2f}"
            )
        lines += [
            "",
            "ratio = resolve / stats (p50, p99 latency; requests per second).",
            f"measured in {self.seconds:.1f} s"
            + (
                " -- STOPPED EARLY at the time budget; fewer requests than asked"
                if self.truncated
                else ""
            ),
        ]
        return "\n".join(lines)


def _percentile(sorted_ms: Sequence[float], fraction: float) -> float:
    if not sorted_ms:
        return 0.0
    index = min(len(sorted_ms) - 1, max(0, round(fraction * len(sorted_ms) + 0.5) - 1))
    return sorted_ms[index]


def _measured(latencies: list[float], elapsed: float) -> Measured:
    ordered = sorted(latencies)
    return Measured(len(ordered), elapsed, _percentile(ordered, 0.50), _percentile(ordered, 0.99))


async def _batch(
    call: Callable[[], Awaitable[Any]], count: int, concurrency: int, latencies: list[float]
) -> float:
    """Run ``count`` calls with at most ``concurrency`` in flight; return the wall time."""
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, count)))))
    return time.perf_counter() - started


def _fields(names: Sequence[str]) -> list[rpb.TemplateField]:
    """One tool call: URL and header with the first secret, a JSON body with all of them."""
    body = ", ".join(f'"k{i}": "{{{{secret:{name}}}}}"' for i, name in enumerate(names))
    return [
        rpb.TemplateField(
            key="url",
            template=f"https://api.example.com/orders/{{{{input.order_id}}}}?key={{{{secret:{names[0]}}}}}",
            encoding=rpb.ENCODING_URL,
        ),
        rpb.TemplateField(
            key="header:Authorization",
            template=f"Bearer {{{{secret:{names[0]}}}}}",
            encoding=rpb.ENCODING_HEADER,
        ),
        rpb.TemplateField(
            key="body",
            template="{" + body + ', "order_id": "{{input.order_id}}"}',
            encoding=rpb.ENCODING_JSON,
        ),
    ]


class _Bearer(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, token: str) -> None:
        self.metadata = (("authorization", f"Bearer {token}"),)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = tuple(details.metadata or ()) + self.metadata
        return await continuation(details._replace(metadata=metadata), request)


def _channel(address: str, token: str) -> grpc.aio.Channel:
    interceptors: list[Any] = [_Bearer(token)]
    return grpc.aio.insecure_channel(address, interceptors=interceptors)


def _settings(database_url: str) -> tuple[Settings, dict[str, str]]:
    key_id, key = generate_master_key()
    tokens = {ADMIN: new_token(), RESOLVER: new_token()}
    settings = Settings(
        listen="127.0.0.1:0",
        database=DatabaseSettings(url=database_url),
        keyring=parse_master_keys(f"{key_id}:{key}"),
        tokens=tuple(
            TokenEntry(principal=f"bench-{role}", role=role, sha256=hash_token(token))
            for role, token in tokens.items()
        ),
        grace_period=1.0,
    )
    return settings, tokens


async def run_bench(options: Options) -> Report:
    """Start Postgres and a vault, measure, tear everything down."""
    base = Path(tempfile.mkdtemp(prefix="vaultsvc-bench-"))
    pg = EmbeddedPostgres(base)
    try:
        await asyncio.to_thread(pg.start)
        settings, tokens = _settings(pg.uri())
        runtime = await start_server(settings)
        try:
            return await _measure(f"127.0.0.1:{runtime.port}", tokens, options)
        finally:
            await stop_server(runtime, grace=1.0)
    finally:
        await asyncio.to_thread(pg.stop)
        shutil.rmtree(base, ignore_errors=True)


async def _measure(address: str, tokens: dict[str, str], options: Options) -> Report:
    admin_channel = _channel(address, tokens[ADMIN])
    resolver_channel = _channel(address, tokens[RESOLVER])
    try:
        secrets = spbg.SecretServiceStub(admin_channel)
        resolver = rpbg.ResolverServiceStub(resolver_channel)
        most = max(options.secret_counts)
        names = [f"bench_secret_{i:02d}" for i in range(most)]
        for i, name in enumerate(names):
            value = f"sk_live_{i:02d}_" + "x" * 40 + '"&/\\'
            await secrets.CreateSecret(spb.CreateSecretRequest(name=name, value=value))

        stats_request = spb.GetVaultStatsRequest()

        async def stats_call() -> None:
            await secrets.GetVaultStats(stats_request, timeout=RPC_TIMEOUT)

        started = time.monotonic()
        deadline = started + options.budget
        truncated = False
        rows: list[Row] = []
        per_round = max(1, options.requests // max(1, options.rounds))
        for count in options.secret_counts:
            resolve_request = rpb.ResolveTemplateRequest(
                fields=_fields(names[:count]), inputs={"order_id": "A-17"}, tool="bench"
            )

            async def resolve_call(message: rpb.ResolveTemplateRequest = resolve_request) -> None:
                await resolver.ResolveTemplate(message, timeout=RPC_TIMEOUT)

            warm: list[float] = []
            await _batch(resolve_call, options.warmup, options.concurrency, warm)
            await _batch(stats_call, options.warmup, options.concurrency, warm)
            latencies: dict[str, list[float]] = {"resolve": [], "stats": []}
            elapsed = {"resolve": 0.0, "stats": 0.0}
            done = 0
            while done < options.requests:
                if time.monotonic() > deadline:
                    truncated = True
                    break
                n = min(per_round, options.requests - done)
                # Alternate which goes first so neither always follows the other.
                order = [("resolve", resolve_call), ("stats", stats_call)]
                if (done // per_round) % 2:
                    order.reverse()
                for kind, call in order:
                    elapsed[kind] += await _batch(call, n, options.concurrency, latencies[kind])
                done += n
            if not latencies["resolve"]:
                break
            rows.append(
                Row(
                    count,
                    _measured(latencies["resolve"], elapsed["resolve"]),
                    _measured(latencies["stats"], elapsed["stats"]),
                )
            )
        return Report(options, tuple(rows), truncated, time.monotonic() - started)
    finally:
        await admin_channel.close(None)
        await resolver_channel.close(None)


def _parse(argv: Sequence[str] | None) -> Options:
    defaults = Options()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=defaults.requests)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--budget", type=float, default=defaults.budget, help="seconds")
    parser.add_argument(
        "--secrets", default=",".join(map(str, defaults.secret_counts)), help="e.g. 1,5,20"
    )
    args = parser.parse_args(argv)
    counts = tuple(int(part) for part in args.secrets.split(",") if part.strip())
    if (
        not counts
        or min(counts) < 1
        or max(counts) > 100
        or not 1 <= args.requests <= 100_000
        or not 1 <= args.concurrency <= 256
        or args.rounds < 1
        or args.warmup < 0
        or not 0 < args.budget <= 600
    ):
        parser.error(
            "out of range: secrets 1..100, requests 1..100000, concurrency 1..256, "
            "rounds >= 1, warmup >= 0, budget 0..600"
        )
    return Options(args.requests, args.concurrency, counts, args.rounds, args.warmup, args.budget)


def main(argv: Sequence[str] | None = None) -> int:
    options = _parse(argv)
    configure_logging("WARNING", "text")
    report = asyncio.run(run_bench(options))
    print(report.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
