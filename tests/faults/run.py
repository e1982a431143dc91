"""``make faults``: run every fault experiment under load and print what clients saw and
what was lost (nothing acknowledged may be). Exit status 1 when anything was lost.

``python -m tests.faults.run [--duration SECONDS] [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc starts: no fork() chatter
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # pg_ctl is forked under load

from tests.faults.experiments import discover
from tests.faults.lab import Lab, Result


async def run(duration: float, only: list[str]) -> list[Result]:
    results: list[Result] = []
    for experiment in discover():
        name = experiment.__name__
        if only and name not in only:
            continue
        print(f"-- {name} ({duration:.0f} s)", flush=True)
        started = time.monotonic()
        async with Lab.open(duration) as lab:
            lab.result.name = name
            try:
                await experiment(lab)
            except Exception as exc:  # the experiment itself broke: a finding, not a crash
                lab.result.lost.append(f"experiment failed: {type(exc).__name__}: {exc}")
        lab.result.note += f" ({time.monotonic() - started:.0f} s)"
        results.append(lab.result)
    return results


def table(results: list[Result]) -> str:
    lines = [f"{'experiment':<20} {'clients saw':<60} lost", "-" * 110]
    for r in results:
        seen = ", ".join(f"{k}: {v}" for k, v in r.seen.most_common())
        lines.append(f"{r.name:<20} {seen:<60} {'; '.join(r.lost) or 'nothing'}")
        lines.append(f"{'':<20} {r.note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.run")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per experiment")
    parser.add_argument("--only", nargs="*", default=[], help="experiment names to run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    results = asyncio.run(run(args.duration, args.only))
    print(table(results))
    return 1 if any(r.lost for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
