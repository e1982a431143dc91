"""``serve`` (production) and ``dev`` (a throwaway development vault)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

from vaultsvc.auth import ADMIN, OPERATOR, RESOLVER, VIEWER, TokenEntry, hash_token, new_token
from vaultsvc.bootstrap import StartupError
from vaultsvc.cli.common import EXIT_PORT_IN_USE, Subparsers, add_config_flag, fail
from vaultsvc.config import (
    SETTINGS,
    SETTINGS_BY_KEY,
    ConfigError,
    Settings,
    describe,
    load_settings,
)
from vaultsvc.crypto import generate_master_key, parse_master_keys
from vaultsvc.logs import configure_logging
from vaultsvc.ports import PortInUse
from vaultsvc.server import start_server, stop_server

_log = logging.getLogger("vaultsvc.cli")


def register(sub: Subparsers) -> None:
    serve = sub.add_parser("serve", help="run the vault (production)")
    add_config_flag(serve)
    serve.add_argument(
        "--workers",
        type=_workers,
        help="worker processes sharing the listen port: a number or `auto` (one per usable "
        "CPU); overrides the `workers` setting (VAULT_WORKERS), default 1",
    )
    serve.set_defaults(func=cmd_serve)

    dev = sub.add_parser(
        "dev",
        help="run a throwaway development vault (NOT for production)",
        description=DEV_DESCRIPTION,
        epilog=dev_environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dev.set_defaults(func=cmd_dev)


# ---------------------------------------------------------------------- serve


def _workers(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be {describe(SETTINGS_BY_KEY['workers'])}")
    return count


async def _serve(settings: Settings, ready_message: str | None = None) -> None:
    runtime = await start_server(settings)
    if ready_message:
        console_url = runtime.console.url if runtime.console is not None else "off"
        message = ready_message.replace("{port}", str(runtime.port))
        metrics_url = runtime.metrics.url if runtime.metrics is not None else "off"
        message = message.replace("{metrics_url}", metrics_url)
        print(message.replace("{console_url}", console_url), flush=True)
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
    """One vault in this process (``workers`` = 1), or a supervisor and its workers."""
    from vaultsvc.supervisor import Supervisor, worker_count

    configure_logging(settings.log_level, settings.log_format)
    try:
        count = worker_count(settings.workers)
        if count > 1:
            return Supervisor(settings, count, ready_message).run()
        asyncio.run(_serve(settings, ready_message))
    except PortInUse as exc:
        return fail(str(exc), EXIT_PORT_IN_USE)
    except (ConfigError, StartupError) as exc:
        return fail(str(exc))
    except OSError as exc:  # e.g. an address that is not this host's, a privileged port
        return fail(f"cannot listen on {settings.listen}: {exc.strerror or exc}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        settings.require_keyring()
    except ConfigError as exc:
        return fail(str(exc))
    if args.workers is not None:
        settings = replace(settings, workers=args.workers)
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


#: Where ``dev`` serves the console unless VAULT_CONSOLE_LISTEN says otherwise.
DEV_CONSOLE_LISTEN = "127.0.0.1:8250"
#: Where ``dev`` serves Prometheus metrics unless VAULT_METRICS_LISTEN says otherwise.
DEV_METRICS_LISTEN = "127.0.0.1:9250"

#: Settings ``dev`` makes itself (its generated key and tokens): their variables are ignored.
DEV_IGNORED = ("master_keys", "master_keys_file", "tokens", "tokens_file")
#: ``dev``'s own defaults where they differ from ``serve``'s.
DEV_DEFAULTS = {"log_format": "text", "console.listen": DEV_CONSOLE_LISTEN}

DEV_DESCRIPTION = """\
Run a throwaway development vault: embedded PostgreSQL in the data directory, one
generated master key and an admin, a viewer and a resolver token, kept in
<data_dir>/dev-credentials.json (mode 0600) and printed at start, so the vault and its
secrets survive restarts. NOT for production: use `serve` with your own keys there.

Options: only -h/--help. Everything else comes from the environment (below); a
VAULT_* variable nobody reads is warned about. Ctrl-C (or SIGTERM) stops the vault."""


def dev_environment_help() -> str:
    """The environment ``dev`` reads, from the settings table (so it cannot drift)."""
    lines = ["environment (the settings of `serve`; dev's own defaults shown):"]
    for setting in SETTINGS:
        if setting.key in DEV_IGNORED:
            continue
        default = DEV_DEFAULTS.get(setting.key)
        text = setting.help + (f" [dev default: {default}]" if default else "")
        lines.append(f"  {setting.env}")
        lines += textwrap.wrap(text, 88, initial_indent="      ", subsequent_indent="      ")
    ignored = ", ".join(SETTINGS_BY_KEY[key].env for key in DEV_IGNORED)
    lines += [
        "",
        f"ignored: {ignored} (dev uses its generated key and tokens)",
        "the full meaning of each: the Configuration table of the README "
        "(`python -m vaultsvc.config` prints it)",
    ]
    return "\n".join(lines)


def _dev_credentials(data_dir: Path) -> dict[str, Any]:
    """Load or create the development key and tokens (file mode 0600)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # private when we create it
    path = data_dir / "dev-credentials.json"
    if path.exists():
        creds = dict(json.loads(path.read_text(encoding="utf-8")))
        if OPERATOR in creds["tokens"]:
            return creds
        # Written before the operator role existed: add its token (the file stays 0600).
        creds["tokens"][OPERATOR] = new_token()
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    else:
        key_id, key = generate_master_key()
        creds = {
            "warning": "development only; never use these outside a throwaway dev vault",
            "master_keys": f"{key_id}:{key}",
            "tokens": {role: new_token() for role in (ADMIN, VIEWER, RESOLVER, OPERATOR)},
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(creds, handle, indent=2)
    return creds


def cmd_dev(args: argparse.Namespace) -> int:
    try:
        ignored = {SETTINGS_BY_KEY[key].env for key in DEV_IGNORED}
        base = load_settings(None, {k: v for k, v in os.environ.items() if k not in ignored})
    except ConfigError as exc:
        return fail(str(exc))
    creds = _dev_credentials(base.data_dir)
    tokens: dict[str, str] = creds["tokens"]
    settings = replace(
        base,
        keyring=parse_master_keys(creds["master_keys"]),
        tokens=tuple(
            TokenEntry(principal=f"dev-{role}", role=role, sha256=hash_token(token))
            for role, token in tokens.items()
        ),
        log_format=base.log_format if os.environ.get("VAULT_LOG_FORMAT") else "text",
        console_listen=base.console_listen or DEV_CONSOLE_LISTEN,
        metrics_listen=base.metrics_listen or DEV_METRICS_LISTEN,
    )
    host = settings.listen.rpartition(":")[0]
    lines = [
        BANNER,
        f"  data directory : {settings.data_dir.resolve()} (embedded PostgreSQL)"
        if not settings.database.url
        else "  database       : VAULT_DATABASE_URL",
        f"  credentials    : {(settings.data_dir / 'dev-credentials.json').resolve()} (mode 0600)",
        f"  listening on   : {host}:{{port}}",
        "  console        : {console_url} (sign in with the admin or viewer token)",
        "  metrics        : {metrics_url} (Prometheus)",
        "",
        f"  admin token    : {tokens[ADMIN]}",
        f"  viewer token   : {tokens[VIEWER]}",
        f"  resolver token : {tokens[RESOLVER]}",
        f"  operator token : {tokens[OPERATOR]} (creates resolver tokens: vaultctl tokens)",
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
