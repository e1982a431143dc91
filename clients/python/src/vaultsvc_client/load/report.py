"""The final report: the processes' results merged, as text for people or one JSON document."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .options import LoadOptions
from .scenario import Scenario
from .seeding import SeededSecrets
from .stats import ErrorKey, LatencyHistogram, ProcessResult

__all__ = ["build_report", "render_text"]


def build_report(
    options: LoadOptions,
    scenario: Scenario,
    pool_size: int,
    results: Sequence[ProcessResult],
    *,
    interrupted: bool,
    seeded: SeededSecrets | None,
    connections: int,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (its shape is documented in the client README)."""
    histogram = LatencyHistogram()
    errors: Counter[ErrorKey] = Counter()
    for result in results:
        histogram.add_encoded(result.histogram)
        errors.update(result.errors)
    ok = sum(r.ok for r in results)
    failed = sum(r.failed for r in results)
    elapsed = max((r.elapsed for r in results), default=0.0)
    planned = [r.planned for r in results]
    by_code: Counter[str] = Counter()
    for (code, _), count in errors.items():
        by_code[code] += count
    return {
        "target": options.address,
        "scenario": {
            "name": scenario.name,
            "fields": len(scenario.fields),
            "secrets_per_request": scenario.slots,
            "names": options.names,
            "pool": pool_size,
            "tool": scenario.tool or options.tool,
        },
        "options": {
            "concurrency": options.concurrency,
            "connections": connections,
            "procs": options.procs,
            "duration_s": options.duration,
            "total": options.total,
            "rps": options.rps,
            "timeout_s": options.timeout,
        },
        "latency_from": "intended_start" if options.rps is not None else "call_start",
        "interrupted": interrupted,
        "count": ok + failed,
        "ok": ok,
        "errors": failed,
        "planned": None if None in planned or not planned else sum(p or 0 for p in planned),
        "missed": sum(r.missed for r in results),
        "duration_s": round(elapsed, 3),
        "rps": round((ok + failed) / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": histogram.summary_ms(),
        "errors_by_code": dict(sorted(by_code.items(), key=lambda item: (-item[1], item[0]))),
        "errors_by_reason": [
            {"code": code, "reason": reason, "count": count}
            for (code, reason), count in sorted(errors.items(), key=lambda item: -item[1])
        ],
        "processes": [
            {
                "count": r.count,
                "ok": r.ok,
                "errors": r.failed,
                "missed": r.missed,
                "duration_s": round(r.elapsed, 3),
            }
            for r in results
        ],
        "seeded": None
        if seeded is None
        else {
            "prefix": seeded.prefix,
            "count": len(seeded.names),
            "value_size": seeded.value_size,
            "removed": seeded.removed,
            "left": seeded.left,
        },
    }


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2) + "\n"


def render_text(report: dict[str, Any]) -> str:
    options = report["options"]
    scenario = report["scenario"]
    lines: list[str] = []
    add = lines.append
    add("Summary:")
    if report["interrupted"]:
        add("  Interrupted:  yes (partial results)")
    add(f"  Target:       {report['target']}")
    secrets = (
        f", {scenario['secrets_per_request']} secret(s) per call from a pool of "
        f"{scenario['pool']} ({scenario['names']})"
        if scenario["secrets_per_request"]
        else ""
    )
    add(f"  Scenario:     {scenario['name']}: {scenario['fields']} field(s){secrets}")
    add(
        f"  Load:         {options['concurrency']} workers, {options['connections']} "
        f"connection(s), {options['procs']} process(es)"
        + (f", open loop at {options['rps']:g} calls/s" if options["rps"] else ", closed loop")
    )
    add(f"  Count:        {report['count']}  (ok {report['ok']}, errors {report['errors']})")
    if report["planned"] is not None:
        add(f"  Scheduled:    {report['planned']}  (missed {report['missed']})")
    add(f"  Duration:     {report['duration_s']:.2f} s")
    add(f"  Rate:         {report['rps']:,.1f} calls/s")
    latency = report["latency_ms"]
    origin = "intended start" if report["latency_from"] == "intended_start" else "call start"
    add("")
    add(f"Latency of successful calls (ms, from {origin}):")
    if latency["count"]:
        names = ["min", "p50", "p90", "p99", "p99_9", "max", "mean"]
        labels = ["min", "p50", "p90", "p99", "p99.9", "max", "mean"]
        cells = [f"{latency[name]:.3f}" for name in names]
        widths = [max(len(a), len(b)) for a, b in zip(labels, cells, strict=True)]
        add("  " + "  ".join(a.rjust(w) for a, w in zip(labels, widths, strict=True)))
        add("  " + "  ".join(b.rjust(w) for b, w in zip(cells, widths, strict=True)))
    else:
        add("  (no successful call)")
    if report["errors_by_reason"]:
        add("")
        add("Errors by status code and reason:")
        rows = [(e["code"], e["reason"], str(e["count"])) for e in report["errors_by_reason"]]
        code_width = max(len(r[0]) for r in rows)
        reason_width = max(len(r[1]) for r in rows)
        for code, reason, count in rows:
            add(f"  {code.ljust(code_width)}  {reason.ljust(reason_width)}  {count}")
    if report["missed"]:
        add("")
        add(
            f"Warning: {report['missed']} scheduled call(s) never started: every worker was "
            "busy. Raise --concurrency (or --procs) to keep up with --rps."
        )
    seeded = report["seeded"]
    if seeded is not None:
        add("")
        left = "unknown" if seeded["left"] is None else seeded["left"]
        add(
            f"Seeded secrets: {seeded['count']} named {seeded['prefix']}* "
            f"({seeded['value_size']} bytes each); removed {seeded['removed']}, left {left}"
        )
    return "\n".join(lines) + "\n"
