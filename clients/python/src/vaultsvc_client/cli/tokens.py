"""``vaultctl tokens``: bearer tokens kept in the vault's database (operator token; an
admin token manages admin and viewer tokens only)."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from .exits import EXIT_OK, EXIT_USAGE, CliError
from .listing import take
from .options import add_command, add_group, connect, non_negative_int, positive_int
from .output import emit, note, print_json, print_table, timestamp, wants_json
from .stdio import confirm_delete

ROLES = ("admin", "viewer", "resolver", "operator")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def register(groups: Any) -> None:
    actions = add_group(groups, "tokens", "manage bearer tokens kept in the vault")

    create = add_command(
        actions,
        "create",
        create_token,
        "Create a token; it is printed once, to stdout.",
        "Create a token for PRINCIPAL. The token is printed once, alone on stdout, and "
        "never shown again (the vault keeps only its hash): store it right away. Resolver "
        "and operator tokens need an operator token; an admin token may create admin and "
        "viewer tokens.",
    )
    create.add_argument("principal", help="who the token is for (shown in the audit trail)")
    create.add_argument("--role", required=True, choices=ROLES, help="the token's role")
    create.add_argument("--description", default="", help="free text, at most 1024 characters")
    expiry = create.add_mutually_exclusive_group()
    expiry.add_argument(
        "--expires-in",
        metavar="DURATION",
        default=None,
        help="lifetime such as 90m, 12h, 30d or 2w (default: no expiry)",
    )
    expiry.add_argument(
        "--expires-at",
        metavar="TIME",
        default=None,
        help="ISO 8601 time with a zone, e.g. 2030-01-31T12:00:00Z",
    )
    create.add_argument(
        "--scope",
        action="append",
        default=[],
        dest="scopes",
        metavar="PATTERN",
        help="resolver tokens only: a secret name or prefix ending in * (repeatable)",
    )

    listing = add_command(
        actions, "list", list_tokens, "List tokens (metadata and fingerprints, never a token)."
    )
    listing.add_argument(
        "--limit", type=non_negative_int, default=0, help="at most N tokens (default: all)"
    )
    listing.add_argument(
        "--page-size", type=positive_int, default=100, help="tokens per request (default 100)"
    )

    revoke = add_command(
        actions, "revoke", revoke_token, "Revoke a token (on every replica at once)."
    )
    revoke.add_argument("id", help="the token's id, as `tokens list` shows it")
    revoke.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def expiry_of(args: argparse.Namespace, now: datetime | None = None) -> datetime | None:
    if args.expires_in is not None:
        match = _DURATION.match(args.expires_in.strip())
        if match is None or int(match.group(1)) == 0:
            raise CliError(
                f"--expires-in {args.expires_in!r}: use a positive number and a unit s, m, "
                "h, d or w (e.g. 30d)",
                EXIT_USAGE,
                "usage",
            )
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
        return (now or datetime.now(UTC)) + timedelta(seconds=seconds)
    if args.expires_at is not None:
        try:
            moment = datetime.fromisoformat(args.expires_at.strip().replace("Z", "+00:00"))
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise CliError(
                f"--expires-at {args.expires_at!r}: use ISO 8601 with a zone "
                "(2030-01-31T12:00:00Z)",
                EXIT_USAGE,
                "usage",
            )
        return moment
    return None


def token_dict(info: Any) -> dict[str, Any]:
    return {
        "id": info.id,
        "principal": info.principal,
        "role": info.role,
        "description": info.description,
        "scopes": list(info.scopes),
        "fingerprint": info.fingerprint,
        "create_time": timestamp(info, "create_time"),
        "expire_time": timestamp(info, "expire_time"),
    }


def create_token(args: argparse.Namespace) -> int:
    expire_time = expiry_of(args)
    with connect(args) as client:
        created = client.create_token(
            args.principal,
            args.role,
            description=args.description,
            expire_time=expire_time,
            scopes=args.scopes,
        )
    info = token_dict(created.info)
    note(
        f"WARNING: this {info['role']} token for {info['principal']} is shown only now; "
        "store it safely (id "
        f"{info['id']}, fingerprint {info['fingerprint']}"
        + (f", expires {info['expire_time']}" if info["expire_time"] else ", no expiry")
        + ")."
    )
    if wants_json(args):
        print_json({"token": created.token, **info})
    else:
        print(created.token)
    return EXIT_OK


def list_tokens(args: argparse.Namespace) -> int:
    with connect(args) as client:
        rows = [token_dict(info) for info in take(client.iter_tokens(args.page_size), args.limit)]
    if wants_json(args):
        print_json({"tokens": rows})
    else:
        print_table(
            ["ID", "PRINCIPAL", "ROLE", "FINGERPRINT", "EXPIRES", "SCOPES", "DESCRIPTION"],
            [
                [
                    r["id"],
                    r["principal"],
                    r["role"],
                    r["fingerprint"],
                    r["expire_time"] or "never",
                    ",".join(r["scopes"]),
                    r["description"],
                ]
                for r in rows
            ],
        )
        note(f"{len(rows)} token(s)")
    return EXIT_OK


def revoke_token(args: argparse.Namespace) -> int:
    with connect(args) as client:
        confirm_delete(args, "token", args.id)
        client.revoke_token(args.id)
    emit(args, {"revoked": args.id}, f"revoked token {args.id}")
    return EXIT_OK
