"""``vaultctl audit``: the audit trail, newest first (admin token)."""

from __future__ import annotations

import argparse
from typing import Any

from .exits import EXIT_OK
from .listing import take
from .options import add_command, connect, non_negative_int, positive_int
from .output import print_json, print_table, timestamp, wants_json


def register(groups: Any) -> None:
    audit = add_command(groups, "audit", show_audit, "Show audit events, newest first.")
    audit.add_argument("--secret", default="", metavar="NAME", help="events naming this secret")
    audit.add_argument("--principal", default="", help="events of this principal (token name)")
    audit.add_argument(
        "--limit", type=non_negative_int, default=50, help="at most N events (0: all; default 50)"
    )
    audit.add_argument(
        "--page-size", type=positive_int, default=100, help="events per request (default 100)"
    )


def show_audit(args: argparse.Namespace) -> int:
    with connect(args) as client:
        pager = client.iter_audit_events(args.secret, args.principal, args.page_size)
        events = take(pager, args.limit)
    rows: list[dict[str, Any]] = [
        {
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
        for event in events
    ]
    if wants_json(args):
        print_json({"events": rows})
    else:
        print_table(
            ["TIME", "PRINCIPAL", "METHOD", "OUTCOME", "SECRETS", "TOOL", "REQUEST"],
            [
                [
                    r["time"] or "",
                    r["principal"],
                    r["method"].rsplit(".", 1)[-1],
                    r["outcome"] + (" (forced)" if r["forced"] else ""),
                    ", ".join(r["secret_names"]),
                    r["tool"],
                    r["request_id"],
                ]
                for r in rows
            ],
        )
    return EXIT_OK
