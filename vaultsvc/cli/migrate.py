"""``migrate``: apply database migrations (after the start-up key checks) and exit."""

from __future__ import annotations

import argparse
import asyncio

from vaultsvc.bootstrap import StartupError, opened_database, prepare_database
from vaultsvc.cli.common import Subparsers, add_config_flag, fail
from vaultsvc.config import ConfigError, Settings, load_settings
from vaultsvc.logs import configure_logging


def register(sub: Subparsers) -> None:
    mig = sub.add_parser("migrate", help="apply database migrations and exit")
    add_config_flag(mig)
    mig.set_defaults(func=cmd_migrate)


async def _migrate(settings: Settings) -> list[str]:
    keyring = settings.require_keyring()
    async with opened_database(settings) as db:
        await prepare_database(db, keyring)
        async with db.connection() as conn:
            rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    return [f"V{r['version']}__{r['name']}" for r in rows]


def cmd_migrate(args: argparse.Namespace) -> int:
    configure_logging("WARNING", "text")
    try:
        settings = load_settings(args.config)
        applied = asyncio.run(_migrate(settings))
    except (ConfigError, StartupError) as exc:
        return fail(str(exc))
    print("schema is at " + (applied[-1] if applied else "nothing"))
    return 0
