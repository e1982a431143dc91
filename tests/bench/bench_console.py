"""A page of 1000 secrets through the console's JSON API over N secrets (default 1,000,000),
side by side with the same page over gRPC ListSecrets, in one run.

    .venv/bin/python -m tests.bench.bench_console [--rows 1000000] [--repeat 20]

Rows are inserted directly with SQL (as bench_search does; the list path never decrypts);
requests go through a real vault: the console over HTTP (httpx, bearer token) and the
gRPC API over a real channel, both served by the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from interakt.vault.v1 import secret_service_pb2 as spb

from tests.bench.bench_search import load, open_db
from tests.support.rpc import secrets_admin
from tests.support.vault import start_vault
from vaultsvc.crypto import generate_master_key
from vaultsvc.storage.db import migrate
from vaultsvc.storage.embedded import EmbeddedPostgres
from vaultsvc.vault.paging import encode_page_token

PAGE = 1000
QUERIES: list[tuple[str, str, str | None]] = [
    ("first page, no filter", "", None),
    ("deep page, no filter", "", "svc_0500000_api"),
    ("first page, 'api' substring", "api", None),
    ("rare substring", "x7q9", None),
]


async def timed(repeat: int, call: Callable[[], Awaitable[int]]) -> tuple[float, float, int]:
    """(median, p95) seconds and the row count of the last reply."""
    await call()  # warm-up
    samples: list[float] = []
    rows = 0
    for _ in range(repeat):
        started = time.perf_counter()
        rows = await call()
        samples.append(time.perf_counter() - started)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))], rows


async def main(rows: int, repeat: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="vaultsvc-bench-console-"))
    pg = EmbeddedPostgres(base)
    await asyncio.to_thread(pg.start)
    try:
        db = await open_db(pg.uri(), indexes=True)
        async with db.connection() as conn:
            await migrate(conn)
        started = time.perf_counter()
        await load(db, rows)
        print(f"loaded {rows:,} secrets in {time.perf_counter() - started:.1f}s")
        await db.close()

        # The loaded rows name key id "bench" (placeholder ciphertext, never opened here).
        _, key = generate_master_key()
        vault = await start_vault(
            pg.uri(), console_listen="127.0.0.1:0", master_keys=f"bench:{key}"
        )
        assert vault.runtime.console is not None
        stub = secrets_admin(vault)
        headers = {"Authorization": f"Bearer {vault.tokens['admin']}"}
        async with httpx.AsyncClient(
            base_url=vault.runtime.console.url, headers=headers, timeout=60
        ) as http:
            print(f"\na page of {PAGE} secrets over {rows:,}: median / p95 latency")
            print(f"{'query':30} {'HTTP /api/v1':>22} {'gRPC':>22} {'HTTP/gRPC':>10}")
            for label, contains, after in QUERIES:
                token = encode_page_token(after, contains) if after else ""
                params = {"pageSize": str(PAGE), "nameContains": contains}
                if token:
                    params["pageToken"] = token

                async def over_http(params: dict[str, str] = params) -> int:
                    reply = await http.get("/api/v1/secrets", params=params)
                    reply.raise_for_status()
                    return len(reply.json()["secrets"])

                async def over_grpc(contains: str = contains, token: str = token) -> int:
                    reply = await stub.ListSecrets(
                        spb.ListSecretsRequest(
                            page_size=PAGE, name_contains=contains, page_token=token
                        )
                    )
                    return len(reply.secrets)

                h50, h95, count = await timed(repeat, over_http)
                g50, g95, _ = await timed(repeat, over_grpc)
                print(
                    f"{label:30} {h50 * 1000:9.1f} / {h95 * 1000:7.1f}ms "
                    f"{g50 * 1000:9.1f} / {g95 * 1000:7.1f}ms {h50 / g50:9.2f}x"
                    f"   ({count} rows)"
                )
        await vault.close()
    finally:
        await asyncio.to_thread(pg.stop)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.repeat))
