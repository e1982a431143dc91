"""``vaultctl secrets stats``: vault-wide counters."""

from __future__ import annotations

import argparse
from typing import Any

from .exits import EXIT_OK
from .options import add_command, connect
from .output import emit, timestamp, vertical


def register(secrets_actions: Any) -> None:
    add_command(secrets_actions, "stats", show_stats, "Show vault-wide counters.")


def show_stats(args: argparse.Namespace) -> int:
    with connect(args) as client:
        stats = client.get_vault_stats()
    data: dict[str, Any] = {
        "total_secrets": int(stats.total_secrets),
        "last_update_time": timestamp(stats, "last_update_time"),
    }
    human = {
        "total secrets": str(data["total_secrets"]),
        "last update": data["last_update_time"] or "never",
    }
    emit(args, data, vertical(human))
    return EXIT_OK
