"""vaultctl: the command line for vaultsvc.

One module per command group (``secrets``, ``stats``, ``configs``, ``check``,
``resolve``, ``audit``, ``tokens``, ``completion``); ``options`` holds the parser and the
connection flags (each declared once with its environment variable),
``output`` what is printed, ``stdio`` what is read.

Secret values are never command-line arguments (they would land in shell
history and ``ps``): they come from stdin when it is not a terminal, or from a
no-echo prompt asked twice. The one command that prints values is
``resolve``, and only to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from ..errors import VaultError
from ..load.command import add_load_parser
from . import audit, check, completion, configs, identify, resolve, secrets, stats, tokens
from .exits import (
    EXIT_ALREADY_EXISTS,
    EXIT_CODES,
    EXIT_DENIED,
    EXIT_ERROR,
    EXIT_ETAG_MISMATCH,
    EXIT_IN_USE,
    EXIT_INTERRUPTED,
    EXIT_INVALID_ARGUMENT,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    exit_code_for,
)
from .options import (
    CONNECTION_NOTE,
    Handler,
    Parser,
    UsageError,
    environment_epilog,
    exit_epilog,
    global_options,
    version,
)
from .output import PROG, error
from .templatefile import TemplateFile, load_template_file, parse_template_document

__all__ = [
    "EXIT_ALREADY_EXISTS",
    "EXIT_CODES",
    "EXIT_DENIED",
    "EXIT_ERROR",
    "EXIT_ETAG_MISMATCH",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID_ARGUMENT",
    "EXIT_IN_USE",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CliError",
    "TemplateFile",
    "build_parser",
    "exit_code_for",
    "load_template_file",
    "main",
    "parse_template_document",
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description="Manage secrets and config values of a vaultsvc vault; check and "
        "resolve tool templates; read the audit trail; manage tokens.",
        epilog=environment_epilog() + "\n\n" + exit_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[global_options(shown=True)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    groups = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    secrets_actions = secrets.register(groups)
    stats.register(secrets_actions)
    configs.register(groups)
    check.register(groups)
    resolve.register(groups)
    audit.register(groups)
    tokens.register(groups)
    identify.register(groups)
    load = add_load_parser(groups, parents=[global_options(shown=False)])
    load.epilog = CONNECTION_NOTE + "\n\n" + load.epilog  # load has exit codes of its own
    completion.register(groups, parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs vaultctl; returns the process exit code (see ``EXIT_CODES``)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in arguments
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(arguments)
        except UsageError as exc:
            if not as_json:
                exc.parser.print_usage(sys.stderr)
            error(as_json, "usage", exc.message, extra={"exit_code": str(EXIT_USAGE)})
            return EXIT_USAGE
        except SystemExit as exc:  # --help, --version
            return _system_exit_code(exc)
        as_json = bool(getattr(args, "json", False))
        handler: Handler | None = getattr(args, "handler", None)
        if handler is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        try:
            return handler(args)
        except CliError as exc:
            error(as_json, exc.label, exc.message)
            return exc.exit_code
        except VaultError as exc:
            extra = {k: v for k, v in exc.metadata.items() if k == "existing_name"}
            error(
                as_json,
                exc.code.name,
                exc.message,
                reason=exc.reason,
                request_id=exc.request_id,
                extra=extra,
            )
            return exit_code_for(exc)
        except BrokenPipeError:
            # The reader went away (``vaultctl ... | head``): silence the final flush too.
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return EXIT_ERROR
    except KeyboardInterrupt:
        error(as_json, "interrupted", "cancelled by user")
        return EXIT_INTERRUPTED


def _system_exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return EXIT_OK
    if isinstance(exc.code, int):
        return exc.code
    return EXIT_USAGE
