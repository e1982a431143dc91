"""What vaultctl reads: secret values (stdin or a no-echo prompt), files, confirmations.

Secret values are never command-line arguments (they would land in shell
history and ``ps``).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TextIO

from .exits import EXIT_INVALID_ARGUMENT, EXIT_USAGE, CliError
from .output import note

MAX_VALUE_BYTES = 64 * 1024
MAX_FILE_BYTES = 8 * 1024 * 1024


def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def add_value_source(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """How a secret value is read. There is deliberately no way to pass it as an argument."""
    source = parser.add_mutually_exclusive_group()
    if required:
        stdin_help = "read a new value from stdin (else the value is kept)"
        prompt_help = "prompt (no echo, twice) for a new value"
    else:
        stdin_help = "read the value from stdin (the default when stdin is not a terminal)"
        prompt_help = "prompt (no echo, twice) for the value (the default on a terminal)"
    source.add_argument("--value-stdin", action="store_true", help=stdin_help)
    source.add_argument("--prompt-value", action="store_true", help=prompt_help)
    parser.add_argument(
        "--trim-newline",
        action="store_true",
        help="drop one trailing newline from the value read on stdin",
    )


def read_secret_value(args: argparse.Namespace, prompt: str) -> str:
    """The value from stdin (not a terminal, or --value-stdin) or the no-echo prompt."""
    use_prompt = args.prompt_value or (not args.value_stdin and is_tty(sys.stdin))
    if use_prompt:
        value = getpass.getpass(prompt)
        if not value:
            raise CliError("empty value")
        if getpass.getpass("Repeat the value: ") != value:
            raise CliError("the two values do not match")
        return value
    value = read_stdin_text(MAX_VALUE_BYTES, "value")
    if args.trim_newline:
        value = value.removesuffix("\n").removesuffix("\r")
    elif value.endswith("\n"):
        note("note: the value read from stdin ends with a newline (kept; --trim-newline drops it)")
    if not value:
        raise CliError("empty value on stdin")
    return value


def read_stdin_text(limit: int, what: str) -> str:
    """At most ``limit`` bytes of UTF-8 from stdin; more is an error, never a truncation."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        data: bytes = buffer.read(limit + 1)
    else:
        data = sys.stdin.read(limit + 1).encode("utf-8")
    if len(data) > limit:
        raise CliError(
            f"{what} on stdin is larger than {limit} bytes", EXIT_INVALID_ARGUMENT, "invalid"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{what} on stdin is not valid UTF-8") from exc


def confirm_delete(args: argparse.Namespace, kind: str, name: str) -> None:
    if args.yes:
        return
    if not is_tty(sys.stdin):
        raise CliError(
            f"refusing to delete {kind} {name} without confirmation: stdin is not a "
            "terminal; pass --yes"
        )
    print(
        f"This deletes {kind} {name!r}. Type its name to confirm: ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    answer = sys.stdin.readline().strip()
    if answer != name:
        raise CliError("confirmation did not match; nothing deleted", EXIT_USAGE, "aborted")


def os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__
