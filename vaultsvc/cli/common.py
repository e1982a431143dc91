"""What every ``python -m vaultsvc`` command shares: exit codes, messages, shared flags."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TypeAlias

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_CONFIG = 2
EXIT_PORT_IN_USE = 3
"""``serve``: the listen address is taken (another vault or program holds it)."""
EXIT_WORKERS_FAILING = 4
"""``serve --workers N``: workers kept dying, so the supervisor stopped the vault."""
EXIT_INTERRUPTED = 130

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def fail(message: str, code: int = EXIT_CONFIG) -> int:
    print(f"vaultsvc: error: {message}", file=sys.stderr)
    return code


def warn(message: str) -> None:
    print(f"vaultsvc: warning: {message}", file=sys.stderr)


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    """``--config``: the TOML file every command that reads settings accepts.

    Settings also come from ``VAULT_*`` environment variables (see vaultsvc.config), which
    win over the file; no flag of these commands has an environment variable of its own.
    """
    parser.add_argument("--config", type=Path, help="TOML config file (VAULT_* env overrides it)")
