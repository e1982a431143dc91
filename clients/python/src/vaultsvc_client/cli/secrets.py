"""``vaultctl secrets``: create, get, list, update and delete secrets (values never printed)."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from ..client import VaultClient
from ..errors import AlreadyExists, VaultError
from . import versions
from .exits import EXIT_OK, CliError
from .guard import add_force, delete_guarded
from .listing import show_listing
from .options import add_command, add_group, connect, non_negative_int, positive_int, since
from .output import emit, note, secret_dict, show_usage, usage_dict, vertical, wants_json
from .stdio import add_value_source, confirm_delete, read_secret_value


def register(groups: Any) -> Any:
    """Adds the ``secrets`` group; returns its actions (``stats`` joins them)."""
    actions = add_group(groups, "secrets", "create, inspect, update and delete secrets")

    create = add_command(
        actions,
        "create",
        create_secret,
        "Create a secret; the value is read from stdin or a no-echo prompt.",
    )
    create.add_argument("name", help="the secret's name (unique ignoring case)")
    create.add_argument("--description", default="", help="free text, at most 1024 characters")
    create.add_argument(
        "--allowed-host",
        dest="allowed_hosts",
        action="append",
        default=[],
        metavar="HOST",
        help="bind the secret to a destination host: api.stripe.com or *.stripe.com (repeatable)",
    )
    add_value_source(create, required=False)

    get = add_command(actions, "get", get_secret, "Show a secret's metadata (never a value).")
    get.add_argument("name", help="the secret's name (any case)")

    listing = add_command(
        actions, "list", list_secrets, "List secrets (by name, or --order-by) with their last use."
    )
    listing.add_argument(
        "--contains",
        "--name-contains",
        dest="contains",
        default="",
        metavar="TEXT",
        help="only names containing TEXT (ignoring case)",
    )
    listing.add_argument(
        "--limit", type=non_negative_int, default=0, help="at most N secrets (default: all)"
    )
    listing.add_argument(
        "--page-size", type=positive_int, default=100, help="secrets per request (default 100)"
    )
    listing.add_argument(
        "--show-deleted",
        action="store_true",
        help="also list secrets scheduled for deletion (restorable until their purge time)",
    )
    listing.add_argument(
        "--order-by",
        choices=["name", "last_resolve_time", "update_time", "create_time"],
        default="name",
        help="sort by name (default) or by a time, newest first",
    )
    unused = listing.add_mutually_exclusive_group()
    unused.add_argument(
        "--never-resolved", action="store_true", help="only secrets no resolve ever used"
    )
    unused.add_argument(
        "--unused-since",
        type=since,
        default=None,
        metavar="WHEN",
        help="only secrets not resolved since WHEN (RFC 3339 time or date, or Nd = N days "
        "ago); never-resolved ones included",
    )

    usage = add_command(
        actions, "usage", secret_usage, "Show which tools resolved a secret, when and how often."
    )
    usage.add_argument("name", help="the secret's name (any case)")

    update = add_command(
        actions,
        "update",
        update_secret,
        "Update a secret's description and/or value; what you do not ask to change is kept.",
    )
    update.add_argument("name", help="the secret's name (any case)")
    description = update.add_mutually_exclusive_group()
    description.add_argument("--description", default=None, help="new description")
    description.add_argument(
        "--clear-description", action="store_true", help="remove the description"
    )
    hosts = update.add_mutually_exclusive_group()
    hosts.add_argument(
        "--allowed-host",
        dest="allowed_hosts",
        action="append",
        default=None,
        metavar="HOST",
        help="replace the destination hosts with these (repeatable); widening needs a new value",
    )
    hosts.add_argument(
        "--clear-allowed-hosts",
        action="store_true",
        help="unbind the secret from every host (needs a new value)",
    )
    add_value_source(update, required=True)
    update.add_argument("--etag", default="", help="fail (exit 6) unless the secret has this etag")

    delete = add_command(
        actions,
        "delete",
        delete_secret,
        "Delete a secret: restorable during the vault's recovery window, unless --purge.",
    )
    delete.add_argument("name", help="the secret's name (any case)")
    delete.add_argument("--etag", default="", help="fail (exit 6) unless the secret has this etag")
    delete.add_argument(
        "--purge", action="store_true", help="delete at once, with no recovery window"
    )
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    add_force(delete, "secret")
    versions.register(actions)
    return actions


def create_secret(args: argparse.Namespace) -> int:
    with connect(args) as client:
        value = read_secret_value(args, f"Value for secret {args.name}: ")
        try:
            secret = client.create_secret(
                args.name, value, args.description, allowed_hosts=args.allowed_hosts
            )
        except AlreadyExists as exc:
            _name_the_existing(client, exc, args.name)
            raise
    emit(args, secret_dict(secret), f"created secret {secret.name} (etag {secret.etag})")
    return EXIT_OK


def _name_the_existing(client: VaultClient, error: AlreadyExists, name: str) -> None:
    """Adds the existing secret's spelling (names are unique ignoring case).

    The server's message names the requested spelling only, so ask for the
    secret (lookups ignore case). If that fails too, the error stays as it was.
    """
    with contextlib.suppress(VaultError):
        existing = client.get_secret(name).name
        error.metadata.setdefault("existing_name", existing)
        error.message = f"{error.message}; the existing secret is spelled {existing!r}"


def get_secret(args: argparse.Namespace) -> int:
    with connect(args) as client:
        secret = client.get_secret(args.name)
    data = secret_dict(secret)
    emit(args, data, vertical(data))
    return EXIT_OK


def list_secrets(args: argparse.Namespace) -> int:
    with connect(args) as client:
        return show_listing(
            args,
            client.list_secrets(
                args.contains,
                page_size=args.page_size,
                show_deleted=args.show_deleted,
                order_by=args.order_by,
                never_resolved=args.never_resolved,
                unused_since=args.unused_since,
            ),
            secret_dict,
            key="secrets",
            columns={
                "NAME": "name",
                "DESCRIPTION": "description",
                "UPDATED": "update_time",
                "LAST USED": "last_resolve_time",
                "ETAG": "etag",
                **({"PURGE": "purge_time"} if args.show_deleted else {}),
            },
            noun="secret",
            blanks={"last_resolve_time": "never"},
        )


def update_secret(args: argparse.Namespace) -> int:
    description: str | None = args.description
    if args.clear_description:
        description = ""
    changes_value = args.value_stdin or args.prompt_value
    allowed_hosts: list[str] | None = args.allowed_hosts
    if args.clear_allowed_hosts:
        allowed_hosts = []
    if description is None and not changes_value and allowed_hosts is None:
        raise CliError(
            "nothing to update: give --description, --clear-description, --allowed-host, "
            "--clear-allowed-hosts, --value-stdin or --prompt-value"
        )
    with connect(args) as client:
        value = None
        if changes_value:
            value = read_secret_value(args, f"New value for secret {args.name}: ")
        secret = client.update_secret(
            args.name, value, description, args.etag, allowed_hosts=allowed_hosts
        )
    emit(args, secret_dict(secret), f"updated secret {secret.name} (etag {secret.etag})")
    return EXIT_OK


def secret_usage(args: argparse.Namespace) -> int:
    with connect(args) as client:
        secret = client.get_secret(args.name)
    show_usage(args, "secret", secret.name, usage_dict(secret))
    return EXIT_OK


def delete_secret(args: argparse.Namespace) -> int:
    with connect(args) as client:
        confirm_delete(args, "secret", args.name)
        forced = delete_guarded(
            args,
            "secret",
            args.name,
            lambda force: client.delete_secret(args.name, args.etag, purge=args.purge, force=force),
        )
    emit(
        args,
        {"deleted": args.name, "purged": args.purge, "forced": forced},
        f"deleted secret {args.name}" + (" (forced: it was in use)" if forced else ""),
    )
    if not args.purge and not wants_json(args):
        note(
            f"restorable with `vaultctl secrets restore {args.name}` until the vault's "
            "recovery window ends (unless the vault deletes at once)"
        )
    return EXIT_OK
