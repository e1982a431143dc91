"""``vaultctl configs``: non-sensitive config values (readable by viewers; may be arguments)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .exits import EXIT_OK
from .guard import add_force, delete_guarded
from .listing import show_listing
from .options import add_command, add_group, connect, non_negative_int, positive_int
from .output import config_dict, emit, show_usage, usage_dict, vertical
from .stdio import MAX_VALUE_BYTES, confirm_delete, is_tty, read_stdin_text


def register(groups: Any) -> None:
    actions = add_group(groups, "configs", "manage non-sensitive config values")

    put = add_command(
        actions,
        "put",
        put_config,
        "Create or replace a config value.",
        "Create or replace a config value. Config values are NOT secret: anyone with a "
        "viewer token can read them. Without VALUE, it is read from stdin (or asked).",
    )
    put.add_argument("key", help="the config value's key (unique ignoring case)")
    put.add_argument(
        "value", nargs="?", default=None, help="the value (default: read from stdin or asked)"
    )
    put.add_argument("--description", default="", help="free text, at most 1024 characters")

    get = add_command(actions, "get", get_config, "Show a config value.")
    get.add_argument("key", help="the config value's key (any case)")

    listing = add_command(actions, "list", list_configs, "List config values sorted by key.")
    listing.add_argument(
        "--contains",
        "--key-contains",
        dest="contains",
        default="",
        metavar="TEXT",
        help="only keys containing TEXT (ignoring case)",
    )
    listing.add_argument(
        "--limit", type=non_negative_int, default=0, help="at most N values (default: all)"
    )
    listing.add_argument(
        "--page-size", type=positive_int, default=100, help="values per request (default 100)"
    )

    usage = add_command(
        actions, "usage", config_usage, "Show which tools resolved a config value, and when."
    )
    usage.add_argument("key", help="the config value's key (any case)")

    delete = add_command(actions, "delete", delete_config, "Delete a config value.")
    delete.add_argument("key", help="the config value's key (any case)")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    add_force(delete, "config value")


def put_config(args: argparse.Namespace) -> int:
    with connect(args) as client:
        value: str | None = args.value
        if value is None:
            if is_tty(sys.stdin):
                print(f"Value for config {args.key}: ", end="", file=sys.stderr, flush=True)
                value = sys.stdin.readline().rstrip("\r\n")
            else:
                value = read_stdin_text(MAX_VALUE_BYTES, "value")
        config = client.put_config_value(args.key, value, args.description)
    emit(args, config_dict(config), f"stored config {config.key}")
    return EXIT_OK


def get_config(args: argparse.Namespace) -> int:
    with connect(args) as client:
        config = client.get_config_value(args.key)
    data = config_dict(config)
    emit(args, data, vertical(data))
    return EXIT_OK


def list_configs(args: argparse.Namespace) -> int:
    with connect(args) as client:
        return show_listing(
            args,
            client.list_config_values(args.contains, page_size=args.page_size),
            config_dict,
            key="config_values",
            columns={
                "KEY": "key",
                "VALUE": "value",
                "DESCRIPTION": "description",
                "UPDATED": "update_time",
            },
            noun="config value",
        )


def config_usage(args: argparse.Namespace) -> int:
    with connect(args) as client:
        config = client.get_config_value(args.key)
    show_usage(args, "config value", config.key, usage_dict(config))
    return EXIT_OK


def delete_config(args: argparse.Namespace) -> int:
    with connect(args) as client:
        confirm_delete(args, "config value", args.key)
        forced = delete_guarded(
            args,
            "config value",
            args.key,
            lambda force: client.delete_config_value(args.key, force=force),
        )
    emit(
        args,
        {"deleted": args.key, "forced": forced},
        f"deleted config {args.key}" + (" (forced: it was in use)" if forced else ""),
    )
    return EXIT_OK
