"""``vaultctl audit``: the audit trail, newest first, or followed as it grows (admin token)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import DeadlineExceeded, Unavailable
from .exits import EXIT_OK, CliError
from .listing import take
from .options import add_command, connect, non_negative_int, positive_int
from .output import cell, note, print_json, print_table, timestamp, wants_json

FOLLOW_LOOKBACK = timedelta(seconds=90)
"""How far back each --follow poll looks again: an event becomes visible up to about a
minute after its time (aggregated unauthenticated refusals are written when their minute
ends; group-committed and transactional events a few seconds at most)."""
FOLLOW_SINCE = timedelta(minutes=10)
"""What --follow shows first when --since is not given."""

_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def moment(text: str) -> datetime:
    """``30s``, ``15m``, ``1h``, ``7d`` (that long ago) or an RFC 3339 time."""
    text = text.strip()
    match = _DURATION.fullmatch(text)
    if match:
        return datetime.now(UTC) - timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or "T" not in text.upper():
        raise argparse.ArgumentTypeError(
            "must be a duration (30s, 15m, 1h, 7d) or an RFC 3339 time (2026-01-31T12:00:00Z)"
        )
    return parsed.astimezone(UTC)


def interval(text: str) -> float:
    seconds = float(text)
    if not 0.1 <= seconds <= 60:
        raise argparse.ArgumentTypeError("must be between 0.1 and 60 seconds")
    return seconds


def register(groups: Any) -> None:
    audit = add_command(
        groups,
        "audit",
        show_audit,
        "Show audit events, newest first (or follow them as they come).",
    )
    audit.add_argument("--secret", default="", metavar="NAME", help="events naming this secret")
    audit.add_argument("--principal", default="", help="events of this principal (token name)")
    audit.add_argument(
        "--since",
        type=moment,
        default=None,
        metavar="WHEN",
        help="events at or after WHEN: a duration ago (30s, 15m, 1h, 7d) or an RFC 3339 time",
    )
    audit.add_argument(
        "--until", type=moment, default=None, metavar="WHEN", help="events before WHEN (as --since)"
    )
    audit.add_argument(
        "--method",
        default="",
        help="events of this method: /pkg.Service/Method or a bare name (CreateSecret)",
    )
    audit.add_argument("--outcome", default="", help="events with this outcome (OK, NOT_FOUND...)")
    audit.add_argument("--tool", default="", help="events of calls made with this tool id")
    audit.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="print the events since --since (default: the last 10 minutes), oldest first, "
        "then new ones as they come, until Ctrl-C",
    )
    audit.add_argument(
        "--interval",
        type=interval,
        default=2.0,
        metavar="SECONDS",
        help="with --follow: seconds between polls (default 2)",
    )
    audit.add_argument(
        "--limit",
        type=non_negative_int,
        default=50,
        help="at most N events (0: all; default 50; not with --follow)",
    )
    audit.add_argument(
        "--page-size", type=positive_int, default=100, help="events per request (default 100)"
    )


def _row(event: Any) -> dict[str, Any]:
    return {
        "time": timestamp(event, "time"),
        "principal": event.principal,
        "method": event.method,
        "outcome": event.outcome,
        "secret_names": list(event.secret_names),
        "tool": event.tool,
        "request_id": event.request_id,
        "peer": event.peer,
        "forced": bool(event.forced),
    }


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        row["time"] or "",
        row["principal"],
        row["method"].rsplit(".", 1)[-1],
        row["outcome"] + (" (forced)" if row["forced"] else ""),
        ", ".join(row["secret_names"]),
        row["tool"],
        row["request_id"],
    ]


_HEADERS = ["TIME", "PRINCIPAL", "METHOD", "OUTCOME", "SECRETS", "TOOL", "REQUEST"]


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "method": args.method,
        "outcome": args.outcome,
        "tool": args.tool,
    }


def show_audit(args: argparse.Namespace) -> int:
    if args.since is not None and args.until is not None and args.until <= args.since:
        raise CliError("--until must be after --since")
    if args.follow:
        if args.until is not None:
            raise CliError("--follow shows new events as they come: it takes no --until")
        return follow_audit(args)
    with connect(args) as client:
        pager = client.iter_audit_events(
            args.secret,
            args.principal,
            args.page_size,
            start_time=args.since,
            end_time=args.until,
            **_filters(args),
        )
        events = take(pager, args.limit)
    rows = [_row(event) for event in events]
    if wants_json(args):
        print_json({"events": rows})
    else:
        print_table(_HEADERS, [_cells(r) for r in rows])
    return EXIT_OK


def _key(event: Any) -> tuple[str, str, int, int]:
    """One event (the server assigns each call its own request id)."""
    return (event.request_id, event.method, event.time.seconds, event.time.nanos)


def _at(event: Any) -> datetime:
    return datetime.fromtimestamp(event.time.seconds, UTC) + timedelta(
        microseconds=event.time.nanos // 1000
    )


def follow_audit(args: argparse.Namespace) -> int:
    """Poll until Ctrl-C (exit 0): each poll reads every event from FOLLOW_LOOKBACK before
    the newest one seen, and prints those not printed yet, oldest first. Printed events are
    remembered while they are inside that window, so none is printed twice and one that
    becomes visible late (or shares its timestamp with one already printed) is not missed."""
    since: datetime = args.since if args.since is not None else datetime.now(UTC) - FOLLOW_SINCE
    seen: dict[tuple[str, str, int, int], datetime] = {}
    newest: datetime | None = None
    as_json = wants_json(args)
    if not as_json:
        print("\t".join(_HEADERS), flush=True)
    try:
        with connect(args) as client:
            while True:
                start = since if newest is None else max(since, newest - FOLLOW_LOOKBACK)
                try:
                    fresh = [
                        event
                        for event in client.iter_audit_events(
                            args.secret,
                            args.principal,
                            args.page_size,
                            start_time=start,
                            **_filters(args),
                        )
                        if _key(event) not in seen
                    ]
                except (Unavailable, DeadlineExceeded) as exc:
                    note(f"vaultctl: audit: {exc.code.name}: {exc.message}; retrying")
                    fresh = []
                fresh.sort(key=lambda e: (e.time.seconds, e.time.nanos, e.request_id))
                _print_events(fresh, as_json)
                for event in fresh:
                    at = _at(event)
                    seen[_key(event)] = at
                    newest = at if newest is None else max(newest, at)
                if newest is not None:
                    floor = newest - FOLLOW_LOOKBACK
                    for key in [k for k, at in seen.items() if at < floor]:
                        del seen[key]
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def _print_events(events: Iterable[Any], as_json: bool) -> None:
    """One line per event: a JSON object (--json) or the table's columns, tab-separated."""
    for event in events:
        row = _row(event)
        if as_json:
            print(json.dumps(row, ensure_ascii=False))
        else:
            print("\t".join(cell(text) for text in _cells(row)))
    sys.stdout.flush()
