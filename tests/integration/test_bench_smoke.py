"""The resolve benchmark runs end to end (tiny request counts; no timing assertions)."""

from __future__ import annotations

from tests.bench.bench_resolve import Options, _parse, run_bench


async def test_bench_runs_and_reports_every_template_size() -> None:
    options = Options(requests=12, concurrency=3, secret_counts=(1, 5, 20), rounds=3, warmup=2)
    report = await run_bench(options)
    assert [row.secrets for row in report.rows] == [1, 5, 20]
    for row in report.rows:
        assert row.resolve.count == 12
        assert row.stats.count == 12
        assert row.resolve.elapsed > 0 and row.stats.elapsed > 0
        assert row.p50_ratio > 0 and row.rps_ratio > 0
    text = report.text()
    assert "p50 ratio" in text and "rps ratio" in text
    assert (
        len([line for line in text.splitlines() if line.strip().startswith(("1 |", "5 |", "20 |"))])
        == 3
    )


def test_bench_arguments_are_bounded() -> None:
    assert _parse([]) == Options()
    assert _parse(["--requests", "5", "--secrets", "2,3"]).secret_counts == (2, 3)
