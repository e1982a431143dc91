"""The parser and the connection: each flag declared once, with its environment variable.

Connection and output options are listed once, in ``vaultctl --help``. They are
also accepted after the command (``vaultctl secrets list --json``), where they
are hidden from the command's own help.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from .._common import DEFAULT_ADDRESS, DEFAULT_TIMEOUT, TLSConfig
from ..client import VaultClient
from .exits import EXIT_CODES, CliError
from .output import one_line

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """An argument error found by argparse; ``main`` reports it (as JSON with ``--json``)."""

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        super().__init__(message)
        self.message = message
        self.parser = parser


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No prefix matching: "--value x" must not silently become "--value-stdin x".
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # Someone may have typed a secret value as an argument: never echo argument
        # text into a terminal log or CI output.
        if message.startswith("unrecognized arguments:"):
            message = (
                "unrecognized argument(s), not shown in case one is a secret value "
                "(values are never arguments: pipe them on stdin or answer the prompt)"
            )
        elif "ignored explicit argument" in message:
            message = message.split(": ignored explicit argument", 1)[0] + " takes no value"
        raise UsageError(one_line(message), self)


@dataclass(frozen=True)
class Option:
    """One global option: its flag, help, and the environment variable it falls back to."""

    flag: str
    help: str
    env: str | None = None
    metavar: str | None = None
    flag_only: bool = False  # a switch (store_true)
    number: bool = False

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def value(self, args: argparse.Namespace) -> Any:
        """The flag's value, else the environment's (empty counts as unset), else None."""
        given = getattr(args, self.dest, None)
        if given is not None:
            return given
        if self.env:
            return os.environ.get(self.env) or None
        return None


CONNECTION: tuple[Option, ...] = (
    Option("--addr", f"server address (default {DEFAULT_ADDRESS})", "VAULT_ADDR", "HOST:PORT"),
    Option("--token", "bearer token, without the 'Bearer ' prefix", "VAULT_TOKEN", "TOKEN"),
    Option("--token-file", "read the bearer token from FILE", None, "FILE"),
    Option("--ca-file", "CA bundle to verify the server; implies TLS", "VAULT_CACERT", "PEM"),
    Option("--cert-file", "client certificate for mutual TLS", "VAULT_CLIENT_CERT", "PEM"),
    Option("--key-file", "client private key for mutual TLS", "VAULT_CLIENT_KEY", "PEM"),
    Option("--server-name", "expected TLS server name (overrides the address)", None, "NAME"),
    Option("--tls", "use TLS even on a loopback address", flag_only=True),
    Option(
        "--insecure", "plaintext even off loopback (never sends a token safely)", flag_only=True
    ),
    Option(
        "--timeout",
        f"deadline of each call in seconds (default {DEFAULT_TIMEOUT:g})",
        None,
        "SECONDS",
        number=True,
    ),
)
OUTPUT: tuple[Option, ...] = (
    Option(
        "--json", "one JSON document on stdout; errors as one JSON object on stderr", flag_only=True
    ),
)
OPTIONS = {option.dest: option for option in CONNECTION + OUTPUT}


def global_options(*, shown: bool) -> Parser:
    """The connection and output options as a parent parser.

    ``shown`` False keeps them out of a command's help (they are listed once, in
    ``vaultctl --help``). Defaults are suppressed, so a value given before the
    command is not reset by the command's parser.
    """
    parent = Parser(add_help=False)
    for title, options in (("connection", CONNECTION), ("output", OUTPUT)):
        group = parent.add_argument_group(title) if shown else parent
        for option in options:
            text = option.help + (f" (env {option.env})" if option.env else "")
            kwargs: dict[str, Any] = {
                "default": argparse.SUPPRESS,
                "help": text if shown else argparse.SUPPRESS,
            }
            if option.flag_only:
                kwargs["action"] = "store_true"
            else:
                kwargs["metavar"] = option.metavar
                if option.number:
                    kwargs["type"] = float
            group.add_argument(option.flag, **kwargs)
    return parent


def environment_epilog() -> str:
    lines = ["environment:"]
    for option in CONNECTION:
        if option.env:
            lines.append(f"  {option.env:<18}  {option.flag}: {option.help}")
    lines += [
        "",
        "Without TLS options, loopback addresses use plaintext and any other address",
        "uses TLS with the system trust store.",
        "",
        "Secret values are never arguments: pipe them on stdin",
        '(printf %s "$V" | vaultctl secrets create NAME) or type them at the no-echo prompt.',
    ]
    return "\n".join(lines)


def exit_epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:<3}  {text}" for code, text in EXIT_CODES.items())


CONNECTION_NOTE = (
    "Connection and output options (--addr, --token, --json, TLS...) may also follow\n"
    "the command: see vaultctl --help."
)
COMMAND_EPILOG = CONNECTION_NOTE + "\n\n" + exit_epilog()


def add_command(
    subparsers: Any,
    name: str,
    handler: Handler,
    help_text: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A command that accepts the (hidden) global options after its name."""
    command: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=help_text,
        description=description or help_text,
        parents=[global_options(shown=False)],
        epilog=COMMAND_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.set_defaults(handler=handler)
    return command


def add_group(groups: Any, name: str, help_text: str) -> Any:
    """A command group (``secrets``, ``configs``); bare, it prints its help and fails."""
    group: argparse.ArgumentParser = groups.add_parser(
        name,
        help=help_text,
        description=help_text,
        parents=[global_options(shown=False)],
        epilog=COMMAND_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = group.add_subparsers(title=f"{name} commands", metavar="ACTION", parser_class=Parser)
    group.set_defaults(handler=usage_of(group))
    return actions


def usage_of(parser: argparse.ArgumentParser) -> Handler:
    def usage(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return usage


def positive_int(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def since(text: str) -> datetime:
    """``--unused-since``: an RFC 3339 time, a date (midnight UTC), or ``Nd`` (N days ago)."""
    stripped = text.strip()
    if stripped.endswith("d") and stripped[:-1].isdigit():
        return datetime.now(UTC) - timedelta(days=int(stripped[:-1]))
    try:
        moment = datetime.fromisoformat(stripped.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 time, a date or Nd (days ago)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def non_negative_int(text: str) -> int:
    number = int(text)
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number


def version() -> str:
    try:
        return metadata.version("vaultsvc-client")
    except metadata.PackageNotFoundError:
        return "unknown"


# -- connection ------------------------------------------------------------------------


def connect(args: argparse.Namespace) -> VaultClient:
    """A client for the options and environment of this invocation."""
    address = OPTIONS["addr"].value(args) or DEFAULT_ADDRESS
    token = resolve_token(args)
    timeout = OPTIONS["timeout"].value(args)
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    if not timeout > 0:
        raise CliError("--timeout must be positive")
    ca_file = OPTIONS["ca_file"].value(args)
    cert_file = OPTIONS["cert_file"].value(args)
    key_file = OPTIONS["key_file"].value(args)
    server_name = OPTIONS["server_name"].value(args)
    wants_tls, wants_plain = bool(OPTIONS["tls"].value(args)), bool(OPTIONS["insecure"].value(args))
    if wants_tls and wants_plain:
        raise CliError("give either --tls or --insecure, not both")
    insecure = True if wants_plain else (False if wants_tls else None)
    tls: TLSConfig | None = None
    if ca_file or cert_file or key_file or server_name or insecure is False:
        if insecure:
            raise CliError("--insecure cannot be combined with TLS options")
        try:
            tls = TLSConfig.from_files(ca_file, cert_file, key_file, server_name)
        except OSError as exc:
            raise CliError(f"cannot read TLS file: {exc.strerror}: {exc.filename}") from exc
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    try:
        return VaultClient(address, token, tls=tls, insecure=insecure, timeout=timeout)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def resolve_token(args: argparse.Namespace) -> str | None:
    """--token, else --token-file, else VAULT_TOKEN; a 'Bearer ' prefix is refused."""
    token: str | None = getattr(args, "token", None)
    token_file: str | None = getattr(args, "token_file", None)
    if token is not None and token_file is not None:
        raise CliError("give either --token or --token-file, not both")
    source = "--token"
    if token_file is not None:
        source = f"token file {token_file}"
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read token file {token_file}") from exc
        if not token:
            raise CliError(f"token file {token_file} is empty")
    if token is None:
        source = "VAULT_TOKEN"
        token = os.environ.get("VAULT_TOKEN") or None
    if not token:
        return None
    token = token.strip()
    scheme, _, rest = token.partition(" ")
    if scheme.lower() == "bearer" and rest.strip():
        raise CliError(
            f"the token from {source} starts with 'Bearer ': give the token alone "
            "(vaultctl sends the 'Bearer ' prefix itself)"
        )
    return token
