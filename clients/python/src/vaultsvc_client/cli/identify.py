"""``vaultctl identify``: is this (leaked) string the value of one of our secrets?

The candidate is read from stdin only (never argv, which other users of the machine
can read in the process list) and is never printed. Admin token; the vault rate-limits
these calls because each one is an equality test against every stored value.
"""

from __future__ import annotations

import argparse
from typing import Any

from .exits import EXIT_OK, CliError
from .options import add_command, connect
from .output import emit, print_table, wants_json
from .stdio import read_stdin_text

_MAX_CANDIDATE_BYTES = 64 * 1024


def register(groups: Any) -> None:
    identify = add_command(
        groups,
        "identify",
        identify_value,
        "Tell whether the string on stdin is the value of any secret version (admin).",
        "Read a candidate string from stdin (for example a token found in a log or a "
        "public repository) and list the secret versions whose value equals it exactly "
        "(none: an empty list, exit status 0). The candidate is never printed, logged "
        "or stored; calls are rate-limited by the vault.",
    )
    identify.add_argument(
        "--trim-newline",
        action="store_true",
        help="drop one trailing newline from the candidate read on stdin",
    )


def identify_value(args: argparse.Namespace) -> int:
    candidate = read_stdin_text(_MAX_CANDIDATE_BYTES, "candidate")
    if args.trim_newline and candidate.endswith("\n"):
        candidate = candidate[:-1]
    if not candidate:
        raise CliError("empty candidate on stdin")
    with connect(args) as client:
        matches = client.identify_secret_value(candidate)
    rows: list[dict[str, Any]] = [
        {"name": m.name, "version": int(m.version), "current": bool(m.current)} for m in matches
    ]
    if wants_json(args):
        emit(args, {"matches": rows}, "")
    elif rows:
        print_table(
            ["NAME", "VERSION", "CURRENT"],
            [[r["name"], str(r["version"]), "*" if r["current"] else ""] for r in rows],
        )
    else:
        print("no secret version has this value")
    return EXIT_OK
