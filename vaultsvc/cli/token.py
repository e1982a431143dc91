"""``token create``: a fresh API token and the config line that holds only its hash."""

from __future__ import annotations

import argparse

from vaultsvc.auth import ROLES, hash_token, new_token
from vaultsvc.cli.common import Subparsers, fail
from vaultsvc.config import ConfigError, validate_token_entry


def register(sub: Subparsers) -> None:
    token = sub.add_parser("token", help="manage API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="print a fresh token and its config line")
    create.add_argument("--principal", required=True)
    create.add_argument("--role", required=True, choices=sorted(ROLES))
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        default=[],
        metavar="PATTERN",
        help="resolver tokens: a secret name or prefix* it may resolve (repeatable; none: all)",
    )
    create.set_defaults(func=cmd_token_create)


def cmd_token_create(args: argparse.Namespace) -> int:
    if args.role not in ROLES:
        return fail(f"role must be one of {', '.join(sorted(ROLES))}")
    try:
        validate_token_entry(args.principal, args.role, "0" * 64, "--principal", args.scopes)
    except ConfigError as exc:
        return fail(str(exc))
    token = new_token()
    digest = hash_token(token).hex()
    print(f"token (shown once; give it to {args.principal} and store it in a secret manager):")
    print(f"  {token}")
    print("config line (only the hash goes into server config):")
    scopes = ":" + "|".join(args.scopes) if args.scopes else ""
    print(f"  VAULT_TOKENS entry : {args.principal}:{args.role}:{digest}{scopes}")
    print("  TOML               : [[tokens]]")
    print(f'                       principal = "{args.principal}"')
    print(f'                       role = "{args.role}"')
    print(f'                       sha256 = "{digest}"')
    if args.scopes:
        listed = ", ".join(f'"{scope}"' for scope in args.scopes)
        print(f"                       scopes = [{listed}]")
    return 0
