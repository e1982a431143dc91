"""``python -m vaultsvc``: one module per command group.

- :mod:`~vaultsvc.cli.serve`: ``serve`` and ``dev``
- :mod:`~vaultsvc.cli.migrate`: ``migrate``
- :mod:`~vaultsvc.cli.token`: ``token create``
- :mod:`~vaultsvc.cli.keys`: ``keys generate|status|rewrap``

Each group's ``register`` adds its parsers; shared flags are declared once in
:mod:`~vaultsvc.cli.common`.
"""

from __future__ import annotations

import argparse

from vaultsvc.cli import keys, migrate, serve, token
from vaultsvc.cli.common import EXIT_INTERRUPTED, fail
from vaultsvc.crypto import KeyringError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vaultsvc", description="The Interakt secrets vault."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve.register(sub)
    migrate.register(sub)
    token.register(sub)
    keys.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyringError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


__all__ = ["build_parser", "main"]
