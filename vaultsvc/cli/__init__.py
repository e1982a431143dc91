"""``python -m vaultsvc``: one module per command group.

- :mod:`~vaultsvc.cli.serve`: ``serve`` and ``dev``
- :mod:`~vaultsvc.cli.migrate`: ``migrate``
- :mod:`~vaultsvc.cli.token`: ``token create``
- :mod:`~vaultsvc.cli.keys`: ``keys generate|status|rewrap``
- :mod:`~vaultsvc.cli.health`: ``health`` (the container HEALTHCHECK)

The ``vaultsvc`` console script (``[project.scripts]``) is :func:`console_main`: the same
commands, plus ``--version``.

Each group's ``register`` adds its parsers; shared flags are declared once in
:mod:`~vaultsvc.cli.common`.
"""

from __future__ import annotations

import argparse
from importlib import metadata

from vaultsvc.cli import health, keys, migrate, serve, token
from vaultsvc.cli.common import EXIT_INTERRUPTED, fail
from vaultsvc.crypto import KeyringError


def version() -> str:
    """This installation's version of vaultsvc (and of the contract it serves)."""
    try:
        own = metadata.version("vaultsvc")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        own = "unknown (not installed)"
    try:
        api = metadata.version("interakt-vault-api")
    except metadata.PackageNotFoundError:
        api = "unknown"
    return f"vaultsvc {own} (interakt-vault-api {api})"


def build_parser(prog: str = "python -m vaultsvc") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="The Interakt secrets vault.")
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", required=True)
    serve.register(sub)
    migrate.register(sub)
    token.register(sub)
    keys.register(sub)
    health.register(sub)
    return parser


def console_main() -> int:
    """The ``vaultsvc`` command."""
    return main(prog="vaultsvc")


def main(argv: list[str] | None = None, prog: str = "python -m vaultsvc") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return int(args.func(args))
    except KeyringError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


__all__ = ["build_parser", "console_main", "main", "version"]
