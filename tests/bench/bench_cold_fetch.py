"""What a resolve's cache miss costs, in-process: the sealed-row lookup of a real vault.

``python -m tests.bench.bench_cold_fetch [--secrets 1000 100000] [--seconds 3]`` starts an
embedded Postgres, seeds one database per size with sealed secrets (as ``bench_echo``
does), starts a vault on each with a cache far smaller than the pool, and calls
``Vault._sealed_rows`` (what ``ResolveTemplate`` calls after compiling its templates) with
5 names: ``warm`` (the same 5, cache hits) and ``cold`` (5 drawn at random, misses), at
each concurrency. No gRPC, no template, no decryption, no audit: only the miss path
(cache lookup, fetch batcher, pool, the SELECT, building and storing the rows). It prints
calls/s, p50 and CPU microseconds per call of this process and of Postgres (every
process of the server: backends, WAL writer), and the batch queries run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from tests.bench.bench_echo import CLK_TCK, ProcessSet, create_db, seed
from tests.support.vault import start_embedded, start_vault
from vaultsvc.crypto import Envelope, generate_master_key, parse_master_keys
from vaultsvc.vault import Vault

NAMES = 5


async def caller(
    core: Vault, names: Callable[[], list[str]], stop: float, latencies: list[float]
) -> None:
    while time.perf_counter() < stop:
        wanted = names()
        started = time.perf_counter()
        await core._sealed_rows(wanted, [])
        latencies.append(time.perf_counter() - started)


async def measure(
    url: str,
    keys: str,
    postmaster: int,
    size: int,
    concurrencies: Sequence[int],
    seconds: float,
    cache: int,
) -> None:
    vault = await start_vault(url, master_keys=keys, cache_max_entries=cache)
    try:
        runtime = vault.runtime
        for _ in range(1000):  # the cache is bypassed until the listener listens
            if runtime.changes is None or runtime.changes.listening:
                break
            await asyncio.sleep(0.01)
        postgres = ProcessSet([], [postmaster])
        core = runtime.vault
        warm = [f"cold_{i:07d}" for i in range(NAMES)]
        pick: dict[str, Callable[[], list[str]]] = {
            "warm": lambda: warm,
            "cold": lambda: [f"cold_{random.randrange(size):07d}" for _ in range(NAMES)],
        }
        for scenario, names in pick.items():
            for concurrency in concurrencies:
                latencies: list[float] = []
                await core._sealed_rows(warm, [])
                queries = core.fetcher.queries
                before_pg, cpu, wall = postgres.snapshot(), time.process_time(), time.perf_counter()
                stop = wall + seconds
                await asyncio.gather(
                    *(caller(core, names, stop, latencies) for _ in range(concurrency))
                )
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                after_pg = postgres.snapshot()
                pg_ticks = sum(t - before_pg.get(pid, 0) for pid, t in after_pg.items())
                pg_seconds = pg_ticks / CLK_TCK
                calls = len(latencies)
                print(
                    f"{size:>9,} secrets {scenario:4} c{concurrency:<3} {calls / wall:8.0f} calls/s"
                    f"  p50 {statistics.median(latencies) * 1e3:6.3f} ms"
                    f"  CPU/call: vault {cpu / calls * 1e6:5.0f} us, Postgres"
                    f" {pg_seconds / calls * 1e6:5.0f} us"
                    f"  queries {core.fetcher.queries - queries}",
                    flush=True,
                )
    finally:
        await vault.close()


async def run(sizes: Sequence[int], concurrencies: Sequence[int], seconds: float) -> None:
    pg = start_embedded("vaultsvc-bench-cold-")
    try:
        key_id, key = generate_master_key()
        keys = f"{key_id}:{key}"
        envelope = Envelope(parse_master_keys(keys))
        postmaster = int((pg.pgdata / "postmaster.pid").read_text().splitlines()[0])
        for size in sizes:
            url = await create_db(pg, f"cold_{size}")
            took = await seed(url, envelope, [f"cold_{i:07d}" for i in range(size)], 40)
            print(f"seeded {size:,} secrets in {took:.0f} s", flush=True)
            await measure(
                url, keys, postmaster, size, concurrencies, seconds, cache=max(size // 10, 20)
            )
    finally:
        pg.stop()
        shutil.rmtree(pg.data_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--secrets", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    asyncio.run(run(args.secrets, args.concurrency, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
