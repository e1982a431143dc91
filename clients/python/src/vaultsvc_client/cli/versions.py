"""``vaultctl secrets versions|rollback|destroy-version|restore``: a secret's value history
and its recovery window (metadata only: no value is ever printed)."""

from __future__ import annotations

import argparse
from typing import Any

from .exits import EXIT_OK
from .listing import take
from .options import add_command, connect, non_negative_int, positive_int
from .output import emit, note, print_json, print_table, secret_dict, timestamp, wants_json
from .stdio import confirm_delete


def register(actions: Any) -> None:
    """Adds the version and recovery commands to the ``secrets`` group."""
    versions = add_command(
        actions,
        "versions",
        list_versions,
        "List a secret's versions, newest first (never a value).",
    )
    versions.add_argument("name", help="the secret's name (any case)")
    versions.add_argument(
        "--limit", type=non_negative_int, default=0, help="at most N versions (default: all)"
    )
    versions.add_argument(
        "--page-size", type=positive_int, default=100, help="versions per request (default 100)"
    )

    rollback = add_command(
        actions,
        "rollback",
        rollback_secret,
        "Make an older version's value current again (as a new version).",
    )
    rollback.add_argument("name", help="the secret's name (any case)")
    rollback.add_argument("version", type=positive_int, help="the version to bring back")
    rollback.add_argument(
        "--etag", default="", help="fail (exit 6) unless the secret has this etag"
    )

    destroy = add_command(
        actions,
        "destroy-version",
        destroy_version,
        "Destroy one old version's value for good (its metadata stays).",
        "Destroy one old version: its ciphertext, wrapped data key and fingerprint are "
        "removed from the live database (the current version cannot be destroyed). Copies "
        "in the database's WAL and in backups remain until those age out.",
    )
    destroy.add_argument("name", help="the secret's name (any case)")
    destroy.add_argument("version", type=positive_int, help="the version to destroy")
    destroy.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    restore = add_command(
        actions,
        "restore",
        restore_secret,
        "Bring back a secret scheduled for deletion, with its versions.",
    )
    restore.add_argument("name", help="the secret's name (any case)")


def version_dict(version: Any) -> dict[str, Any]:
    state = "destroyed" if version.state == 2 else "enabled"
    return {
        "version": int(version.version),
        "state": state,
        "current": bool(version.current),
        "create_time": timestamp(version, "create_time"),
        "created_by": version.created_by,
    }


def list_versions(args: argparse.Namespace) -> int:
    with connect(args) as client:
        pager = client.iter_secret_versions(args.name, page_size=args.page_size)
        rows = [version_dict(v) for v in take(pager, args.limit)]
    if wants_json(args):
        print_json({"versions": rows})
    else:
        print_table(
            ["VERSION", "STATE", "CURRENT", "CREATED", "BY"],
            [
                [
                    str(r["version"]),
                    r["state"],
                    "*" if r["current"] else "",
                    r["create_time"],
                    r["created_by"],
                ]
                for r in rows
            ],
        )
        note(f"{len(rows)} version(s) of {args.name}")
    return EXIT_OK


def rollback_secret(args: argparse.Namespace) -> int:
    with connect(args) as client:
        secret = client.rollback_secret(args.name, args.version, args.etag)
    data = secret_dict(secret)
    emit(
        args,
        data,
        f"secret {secret.name}: version {args.version}'s value is current again as version "
        f"{data['current_version']} (etag {secret.etag})",
    )
    return EXIT_OK


def destroy_version(args: argparse.Namespace) -> int:
    with connect(args) as client:
        confirm_delete(args, "version of secret", f"{args.name} v{args.version}")
        client.destroy_secret_version(args.name, args.version)
    emit(
        args,
        {"destroyed": args.name, "version": args.version},
        f"destroyed version {args.version} of secret {args.name}",
    )
    return EXIT_OK


def restore_secret(args: argparse.Namespace) -> int:
    with connect(args) as client:
        secret = client.restore_secret(args.name)
    emit(args, secret_dict(secret), f"restored secret {secret.name} (etag {secret.etag})")
    return EXIT_OK
