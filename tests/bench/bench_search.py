"""Name search at scale: ListSecrets over N secrets (default 1,000,000), with the indexes
versus the same queries with index scans disabled, measured side by side in one run.

    .venv/bin/python -m tests.bench.bench_search [--rows 1000000] [--repeat 20]

Rows are inserted directly with SQL (the list path never decrypts, so placeholder
ciphertext is fine here); queries go through the real Repository.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from vaultsvc.config import DatabaseSettings
from vaultsvc.storage.db import Database, migrate
from vaultsvc.storage.embedded import EmbeddedPostgres
from vaultsvc.storage.repository import Repository

QUERIES = [
    ("first page, no filter", "", None),
    ("first page, rare substring", "x7q9", None),
    ("first page, common substring", "api", None),
    ("deep page, no filter", "", "svc_0500000"),
    ("exact-ish name", "svc_0123456_api", None),
]


async def load(db: Database, rows: int) -> None:
    async with db.connection() as conn:
        await conn.execute(
            """INSERT INTO secrets (id, name, description, value_version, kek_id, wrapped_dek,
                                    ciphertext, etag, create_time, update_time)
               SELECT gen_random_uuid(),
                      'svc_' || lpad(i::text, 7, '0')
                        || CASE WHEN i % 3 = 0 THEN '_api' ELSE '_key' END
                        || CASE WHEN i % 100000 = 7 THEN '_x7q9' ELSE '' END,
                      '', 1, 'bench', '\\x00', '\\x00', md5(i::text), now(), now()
                 FROM generate_series(1, $1) AS i""",
            rows,
            timeout=3600,
        )
        await conn.execute("UPDATE vault_state SET total_secrets = $1", rows)
        await conn.execute("ANALYZE secrets", timeout=600)


async def open_db(url: str, indexes: bool) -> Database:
    """A pool whose sessions may or may not use index scans (set per connection, so the
    pool's reset on release keeps it)."""
    flag = "on" if indexes else "off"
    settings = DatabaseSettings(url=url, command_timeout=3600, statement_timeout_ms=3_600_000)
    pool = await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=1,
        server_settings={
            "enable_indexscan": flag,
            "enable_bitmapscan": flag,
            "enable_indexonlyscan": flag,
        },
    )
    return Database(pool, settings)


async def time_queries(url: str, repeat: int, indexes: bool) -> dict[str, float]:
    db = await open_db(url, indexes)
    repo = Repository(db)
    results: dict[str, float] = {}
    for label, contains, after in QUERIES:
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            await repo.list_secrets(contains, after, 50)
            samples.append(time.perf_counter() - started)
        results[label] = statistics.median(samples)
    await db.close()
    return results


async def main(rows: int, repeat: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="vaultsvc-bench-search-"))
    pg = EmbeddedPostgres(base)
    await asyncio.to_thread(pg.start)
    try:
        db = await open_db(pg.uri(), indexes=True)
        async with db.connection() as conn:
            await migrate(conn)
        started = time.perf_counter()
        await load(db, rows)
        print(f"loaded {rows:,} secrets (with indexes) in {time.perf_counter() - started:.1f}s")
        await db.close()
        with_idx = await time_queries(pg.uri(), repeat, indexes=True)
        without_idx = await time_queries(pg.uri(), max(3, repeat // 5), indexes=False)
        print(f"\nListSecrets(page_size=50) median latency over {rows:,} secrets")
        print(f"{'query':32} {'indexed':>10} {'no index':>10} {'speed-up':>9}")
        for label, _, _ in QUERIES:
            a, b = with_idx[label], without_idx[label]
            print(f"{label:32} {a * 1000:8.2f}ms {b * 1000:8.1f}ms {b / a:8.1f}x")
    finally:
        await asyncio.to_thread(pg.stop)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.repeat))
