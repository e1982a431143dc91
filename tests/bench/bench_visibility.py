"""Replica-to-replica visibility of a change: commit on replica A -> new value resolved on
replicas B and C, through the sealed-row caches and LISTEN/NOTIFY.

Run with ``make bench-visibility`` (``python -m tests.bench.bench_visibility``). It starts
one embedded Postgres and three ``python -m vaultsvc serve`` processes on it (separate
processes, each with its own cache and listener), warms B's and C's caches, then makes
``--changes`` updates of one secret through A. After each UpdateSecret returns (the commit
is done), B and C are polled with ResolveTemplate back to back until each returns the new
value; the delay is measured from the moment UpdateSecret returned. Between changes the
polling resolve refills the cache, so every poll that still sees the old value is a cache
hit: the numbers are the notification path, not a database read.

The client runs in this process; the resolution of one sample is one resolve round trip.
Prints p50, p99 and max per replica and for both together (target p99 < 100 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rpbg
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as spbg

from tests.support.cli import ServeProcess, cli_env, start_serve
from tests.support.vault import AuthInterceptor, create_database, start_embedded
from vaultsvc.auth import ADMIN, RESOLVER, hash_token, new_token
from vaultsvc.crypto import generate_master_key

NAME = "visible"
POLL_TIMEOUT = 5.0
REQUEST = rpb.ResolveTemplateRequest(
    fields=[rpb.TemplateField(key="v", template="{{secret:visible}}")], tool="bench"
)


def percentile(sorted_ms: Sequence[float], fraction: float) -> float:
    index = min(len(sorted_ms) - 1, max(0, round(fraction * len(sorted_ms) + 0.5) - 1))
    return sorted_ms[index]


def summary(label: str, samples: Sequence[float]) -> str:
    ordered = sorted(samples)
    return (
        f"{label:<10} n={len(ordered):<4} p50 {percentile(ordered, 0.5):7.2f} ms   "
        f"p99 {percentile(ordered, 0.99):7.2f} ms   max {ordered[-1]:7.2f} ms"
    )


async def wait_for(stub: rpbg.ResolverServiceStub, expected: str, since: float) -> float:
    """Resolve back to back until ``expected`` comes back; ms since ``since``."""
    polls = 0
    while True:
        reply = await stub.ResolveTemplate(REQUEST, timeout=5)
        polls += 1
        if reply.fields[0].value == expected:
            return (time.perf_counter() - since) * 1000
        if time.perf_counter() - since > POLL_TIMEOUT:
            raise RuntimeError(f"replica still serves the old value after {POLL_TIMEOUT} s")


async def measure(changes: int, workdir: Path) -> int:
    pg = start_embedded("vaultsvc-bench-visibility-")
    servers: list[ServeProcess] = []
    try:
        url = await create_database(pg)
        key_id, key = generate_master_key()
        tokens = {ADMIN: new_token(), RESOLVER: new_token()}
        spec = ",".join(f"bench-{r}:{r}:{hash_token(t).hex()}" for r, t in tokens.items())
        env = cli_env(url, f"{key_id}:{key}", VAULT_TOKENS=spec)
        for index in range(3):
            servers.append(await start_serve(env, workdir / f"replica-{index}.log"))

        def channel(server: ServeProcess, role: str) -> grpc.aio.Channel:
            return grpc.aio.insecure_channel(
                server.address, interceptors=[AuthInterceptor(tokens[role])]
            )

        admin = spbg.SecretServiceStub(channel(servers[0], ADMIN))
        readers = [rpbg.ResolverServiceStub(channel(s, RESOLVER)) for s in servers[1:]]
        await admin.CreateSecret(spb.CreateSecretRequest(name=NAME, value="v-start"))
        for reader in readers:  # warm: each holds the sealed row from here on
            await wait_for(reader, "v-start", time.perf_counter())

        delays: list[list[float]] = [[], []]
        for i in range(changes):
            value = f"v-{i}"
            await admin.UpdateSecret(spb.UpdateSecretRequest(name=NAME, value=value), timeout=5)
            committed = time.perf_counter()
            seen = await asyncio.gather(*(wait_for(r, value, committed) for r in readers))
            for samples, delay in zip(delays, seen, strict=True):
                samples.append(delay)

        print(
            f"commit on replica A -> new value resolved on B and C: {changes} changes, "
            "3 `vaultsvc serve` processes, one embedded Postgres, 127.0.0.1"
        )
        print(summary("replica B", delays[0]))
        print(summary("replica C", delays[1]))
        both = delays[0] + delays[1]
        print(summary("B and C", both))
        p99 = percentile(sorted(both), 0.99)
        print(f"target p99 < 100 ms: {'met' if p99 < 100 else 'MISSED'}")
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"machine: {os.cpu_count()} CPUs, load average {load} (1, 5, 15 min)")
        return 0
    finally:
        for server in servers:
            try:
                await server.stop()
            except Exception:
                server.proc.kill()
        pg.stop()
        shutil.rmtree(pg.data_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--changes", type=int, default=300, help="updates through A (>= 1)")
    args = parser.parse_args(argv)
    if args.changes < 1:
        parser.error("--changes must be at least 1")
    workdir = Path(tempfile.mkdtemp(prefix="vaultsvc-bench-visibility-"))
    try:
        return asyncio.run(measure(args.changes, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
