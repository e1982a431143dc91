"""``python -m vaultsvc``: serve, dev, migrate, token and keys commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from vaultsvc.auth import ADMIN, RESOLVER, ROLES, VIEWER, TokenEntry, hash_token, new_token
from vaultsvc.config import ConfigError, Settings, load_settings, validate_token_entry
from vaultsvc.crypto import KeyringError, generate_master_key, parse_master_keys
from vaultsvc.logs import configure_logging

_log = logging.getLogger("vaultsvc.cli")
EXIT_CONFIG = 2


def _fail(message: str) -> int:
    print(f"vaultsvc: error: {message}", file=sys.stderr)
    return EXIT_CONFIG


# ---------------------------------------------------------------------- serve


async def _serve(settings: Settings, ready_message: str | None = None) -> None:
    from vaultsvc.server import start_server, stop_server

    runtime = await start_server(settings)
    if ready_message:
        print(ready_message.replace("{port}", str(runtime.port)), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        _log.info(
            "shutdown requested; draining in-flight RPCs",
            extra={"grace_seconds": settings.grace_period},
        )
    finally:
        await stop_server(runtime)


def _run_server(settings: Settings, ready_message: str | None = None) -> int:
    from vaultsvc.server import StartupError

    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(_serve(settings, ready_message))
    except (ConfigError, StartupError) as exc:
        return _fail(str(exc))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        settings.require_keyring()
    except ConfigError as exc:
        return _fail(str(exc))
    return _run_server(settings)


# ------------------------------------------------------------------------ dev

BANNER = r"""
################################################################################
##                                                                            ##
##   DEVELOPMENT VAULT -- DEVELOPMENT ONLY -- NOT FOR PRODUCTION              ##
##                                                                            ##
##   The master key and tokens below were generated for this machine and     ##
##   are kept in plain files under the data directory. Anyone who can read   ##
##   that directory can read every secret. Never store real credentials.     ##
##                                                                            ##
################################################################################
"""


def _dev_credentials(data_dir: Path) -> dict[str, Any]:
    """Load or create the development key and tokens (file mode 0600)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # private when we create it
    path = data_dir / "dev-credentials.json"
    if path.exists():
        return dict(json.loads(path.read_text(encoding="utf-8")))
    key_id, key = generate_master_key()
    creds = {
        "warning": "development only; never use these outside a throwaway dev vault",
        "master_keys": f"{key_id}:{key}",
        "tokens": {role: new_token() for role in (ADMIN, VIEWER, RESOLVER)},
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(creds, handle, indent=2)
    return creds


def cmd_dev(args: argparse.Namespace) -> int:
    try:
        base = load_settings(
            None, {k: v for k, v in os.environ.items() if k != "VAULT_MASTER_KEYS"}
        )
    except ConfigError as exc:
        return _fail(str(exc))
    creds = _dev_credentials(base.data_dir)
    tokens: dict[str, str] = creds["tokens"]
    settings = replace(
        base,
        keyring=parse_master_keys(creds["master_keys"]),
        tokens=tuple(
            TokenEntry(principal=f"dev-{role}", role=role, sha256=hash_token(token))
            for role, token in tokens.items()
        ),
        log_format=os.environ.get("VAULT_LOG_FORMAT", "text"),
    )
    host = settings.listen.rpartition(":")[0]
    lines = [
        BANNER,
        f"  data directory : {settings.data_dir.resolve()} (embedded PostgreSQL)"
        if not settings.database.url
        else "  database       : VAULT_DATABASE_URL",
        f"  credentials    : {(settings.data_dir / 'dev-credentials.json').resolve()} (mode 0600)",
        f"  listening on   : {host}:{{port}}",
        "",
        f"  admin token    : {tokens[ADMIN]}",
        f"  viewer token   : {tokens[VIEWER]}",
        f"  resolver token : {tokens[RESOLVER]}",
        "",
        "  try:",
        f"    export VAULT_ADDR={host}:{{port}} VAULT_TOKEN={tokens[ADMIN]}",
        "    printf %s 'sk_test_123' | .venv/bin/vaultctl secrets create orders_api_key",
        "    .venv/bin/vaultctl secrets list",
        "",
        "  Ctrl-C stops the vault; secrets are kept for the next `make run`.",
        "#" * 80,
    ]
    return _run_server(settings, "\n".join(lines))


# -------------------------------------------------------------------- migrate


async def _migrate(settings: Settings) -> list[str]:
    from vaultsvc.server import open_database, prepare_database

    db, embedded = await open_database(settings)
    try:
        await prepare_database(db, settings.require_keyring())
        async with db.connection() as conn:
            rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        return [f"V{r['version']}__{r['name']}" for r in rows]
    finally:
        await db.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def cmd_migrate(args: argparse.Namespace) -> int:
    from vaultsvc.server import StartupError

    configure_logging("WARNING", "text")
    try:
        settings = load_settings(args.config)
        applied = asyncio.run(_migrate(settings))
    except (ConfigError, StartupError) as exc:
        return _fail(str(exc))
    print("schema is at " + (applied[-1] if applied else "nothing"))
    return 0


# ---------------------------------------------------------------------- token


def cmd_token_create(args: argparse.Namespace) -> int:
    if args.role not in ROLES:
        return _fail(f"role must be one of {', '.join(sorted(ROLES))}")
    try:
        validate_token_entry(args.principal, args.role, "0" * 64, "--principal")
    except ConfigError as exc:
        return _fail(str(exc))
    token = new_token()
    digest = hash_token(token).hex()
    print(f"token (shown once; give it to {args.principal} and store it in a secret manager):")
    print(f"  {token}")
    print("config line (only the hash goes into server config):")
    print(f"  VAULT_TOKENS entry : {args.principal}:{args.role}:{digest}")
    print("  TOML               : [[tokens]]")
    print(f'                       principal = "{args.principal}"')
    print(f'                       role = "{args.role}"')
    print(f'                       sha256 = "{digest}"')
    return 0


# ----------------------------------------------------------------------- keys


def cmd_keys_generate(args: argparse.Namespace) -> int:
    key_id, key = generate_master_key()
    print(f"key id : {key_id}")
    print(f"key    : {key}")
    print("Put it FIRST in VAULT_MASTER_KEYS to make it the primary, keep the old keys after it:")
    print(f"  VAULT_MASTER_KEYS={key_id}:{key},<old-id>:<old-key>")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vaultsvc", description="The Interakt secrets vault."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the vault (production)")
    serve.add_argument("--config", type=Path, help="TOML config file (VAULT_* env overrides it)")
    serve.set_defaults(func=cmd_serve)

    dev = sub.add_parser("dev", help="run a throwaway development vault (NOT for production)")
    dev.set_defaults(func=cmd_dev)

    mig = sub.add_parser("migrate", help="apply database migrations and exit")
    mig.add_argument("--config", type=Path)
    mig.set_defaults(func=cmd_migrate)

    token = sub.add_parser("token", help="manage API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="print a fresh token and its config line")
    create.add_argument("--principal", required=True)
    create.add_argument("--role", required=True, choices=sorted(ROLES))
    create.set_defaults(func=cmd_token_create)

    keys = sub.add_parser("keys", help="master key lifecycle")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="print a new master key id and key")
    gen.set_defaults(func=cmd_keys_generate)
    with contextlib.suppress(ImportError):
        from vaultsvc.keys_cli import add_key_commands

        add_key_commands(keys_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyringError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
