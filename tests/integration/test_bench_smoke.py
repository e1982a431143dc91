"""``make bench`` runs end to end in its quick mode (small pools, short rounds; no timing
assertions: the numbers depend on the machine, the structure and the accounting do not)."""

from __future__ import annotations

import pytest

from tests.bench.bench_echo import Options, parse, run_bench


async def test_quick_bench_measures_echo_and_vault_side_by_side() -> None:
    options = Options.quick()
    results = await run_bench(options)

    assert list(results.main) == [
        (scenario, c) for scenario in ("warm", "cold") for c in options.concurrencies
    ]
    for (scenario, c), (echo, vault) in results.main.items():
        for cell in (echo, vault):
            assert cell.failed == 0 and not cell.errors, (scenario, c, cell.errors)
            assert cell.ok > 0 and cell.elapsed > 0 and cell.qps > 0
            assert 0 < cell.p50 <= cell.p99
        # Server CPU is charged to each side (the vault's includes its Postgres).
        assert vault.cpu_ticks > 0 and 0 < vault.db_ticks < vault.cpu_ticks, (scenario, c)
    assert sum(echo.cpu_ticks for echo, _ in results.main.values()) > 0
    # The durable-audit floor ran in every cell, charged its Postgres, and its events are
    # in the audit trail (one per call it answered).
    assert list(results.floor) == list(results.main)
    for key, floor in results.floor.items():
        assert floor.failed == 0 and not floor.errors and floor.ok > 0, (key, floor.errors)
        assert 0 < floor.db_ticks < floor.cpu_ticks, key
    assert results.floor_events >= sum(floor.ok for floor in results.floor.values())
    # Each server's workers' CPU shares of one warm round (how connections spread).
    assert list(results.shares) == ["echo", "echo+audit", "vault"]
    for shares in results.shares.values():
        assert len(shares) == options.workers and abs(sum(shares) - 1) < 1e-9, shares

    assert list(results.scale) == list(options.scale_concurrencies)
    for small, big in results.scale.values():
        assert small.ok > 0 and big.ok > 0 and small.failed == big.failed == 0
    assert len(results.rss_mib) == options.workers
    assert all(10 < mib < 2048 for mib in results.rss_mib)
    assert 0 < results.commit["p50"] <= results.commit["p99"]
    assert results.commit["synchronous_commit"] == "on"

    text = results.text()
    assert "errors: none" in text
    table = results.markdown().splitlines()
    assert table[0].startswith("| requests | concurrency | echo QPS | vault QPS | QPS / echo")
    assert len([row for row in table if row.startswith(("| warm |", "| cold |"))]) == 12
    assert any(row.startswith("| requests | concurrency | echo+audit QPS") for row in table)


def test_bench_arguments() -> None:
    assert parse([]) == (Options(), False)
    assert parse(["--quick", "--workers", "3"]) == (Options.quick(3), False)
    with pytest.raises(SystemExit):
        parse(["--workers", "0"])
