"""vaultctl: the command line for vaultsvc.

Secret values are never command-line arguments (they would land in shell
history and ``ps``): they come from stdin when it is not a terminal, or from a
no-echo prompt asked twice. The one command that prints values is
``resolve``, and only to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, TextIO

from interakt.vault.v1 import resolver_service_pb2 as resolver_pb

from ._common import DEFAULT_ADDRESS, DEFAULT_TIMEOUT, TLSConfig, encoding_name, template_fields
from .client import VaultClient
from .errors import (
    AlreadyExists,
    DeadlineExceeded,
    EtagMismatch,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    VaultError,
)

__all__ = ["EXIT_CODES", "build_parser", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_ALREADY_EXISTS = 4
EXIT_DENIED = 5
EXIT_ETAG_MISMATCH = 6
EXIT_INVALID_ARGUMENT = 7
EXIT_UNAVAILABLE = 8
EXIT_PROBLEMS = 9

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_ERROR: "any other error",
    EXIT_USAGE: "usage error (bad arguments, unreadable input, refused confirmation)",
    EXIT_NOT_FOUND: "not found (secret, config value)",
    EXIT_ALREADY_EXISTS: "already exists",
    EXIT_DENIED: "permission denied or unauthenticated (missing, unknown or wrong-role token)",
    EXIT_ETAG_MISMATCH: "etag mismatch (changed by someone else since you read it)",
    EXIT_INVALID_ARGUMENT: "invalid argument (bad name, malformed template, over a limit)",
    EXIT_UNAVAILABLE: "server unavailable or deadline exceeded",
    EXIT_PROBLEMS: "check found problems in the templates",
}

MAX_VALUE_BYTES = 64 * 1024
MAX_FILE_BYTES = 8 * 1024 * 1024
PROG = "vaultctl"

_EXIT_EPILOG = "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())

_EPILOG = (
    "environment:\n"
    f"  VAULT_ADDR          server address (default {DEFAULT_ADDRESS})\n"
    "  VAULT_TOKEN         bearer token (--token and --token-file take precedence)\n"
    "  VAULT_CACERT        CA bundle (PEM) to verify the server; implies TLS\n"
    "  VAULT_CLIENT_CERT   client certificate (PEM) for mutual TLS\n"
    "  VAULT_CLIENT_KEY    client private key (PEM) for mutual TLS\n"
    "\n"
    "Without TLS options, loopback addresses use plaintext and any other address\n"
    "uses TLS with the system trust store.\n"
    "\n"
    "Secret values are never arguments: pipe them on stdin\n"
    '(printf %s "$V" | vaultctl secrets create NAME) or type them at the no-echo prompt.\n'
    "\n" + _EXIT_EPILOG
)


class CliError(Exception):
    """A failure detected by vaultctl itself; ``label`` heads the one-line message."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE, label: str = "usage") -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.label = label


# -- entry point -----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Runs vaultctl; returns the process exit code (see ``EXIT_CODES``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version or a usage error
        return _system_exit_code(exc)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except CliError as exc:
        _error_line(exc.label, exc.message)
        return exc.exit_code
    except VaultError as exc:
        _error_line(exc.code.name, exc.message)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        _error_line("interrupted", "cancelled by user")
        return 130
    except BrokenPipeError:
        # The reader went away (``vaultctl ... | head``): silence the final flush too.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR


def exit_code_for(error: VaultError) -> int:
    """The documented exit code of a failed call."""
    table: list[tuple[type[VaultError] | tuple[type[VaultError], ...], int]] = [
        (NotFound, EXIT_NOT_FOUND),
        (AlreadyExists, EXIT_ALREADY_EXISTS),
        ((PermissionDenied, Unauthenticated), EXIT_DENIED),
        (EtagMismatch, EXIT_ETAG_MISMATCH),
        ((InvalidArgument, ResourceExhausted), EXIT_INVALID_ARGUMENT),
        ((Unavailable, DeadlineExceeded), EXIT_UNAVAILABLE),
    ]
    for kinds, code in table:
        if isinstance(error, kinds):
            return code
    return EXIT_ERROR


def _system_exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return EXIT_OK
    if isinstance(exc.code, int):
        return exc.code
    return EXIT_USAGE


def _error_line(label: str, message: str) -> None:
    print(f"{PROG}: {label}: {_one_line(message)}", file=sys.stderr)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- parser ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
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
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{PROG}: usage: {_one_line(message)}\n")


def _connection_options() -> _Parser:
    """Options accepted both before and after the subcommand."""
    common = _Parser(add_help=False)
    group = common.add_argument_group("connection")
    suppress = argparse.SUPPRESS
    group.add_argument(
        "--addr", metavar="HOST:PORT", default=suppress, help="server (env VAULT_ADDR)"
    )
    group.add_argument("--token", default=suppress, help="bearer token (env VAULT_TOKEN)")
    group.add_argument(
        "--token-file", metavar="FILE", default=suppress, help="read the bearer token from FILE"
    )
    group.add_argument("--ca-file", metavar="PEM", default=suppress, help="CA bundle; implies TLS")
    group.add_argument("--cert-file", metavar="PEM", default=suppress, help="client cert (mTLS)")
    group.add_argument("--key-file", metavar="PEM", default=suppress, help="client key (mTLS)")
    group.add_argument(
        "--server-name", metavar="NAME", default=suppress, help="expected TLS server name"
    )
    group.add_argument(
        "--tls", action="store_true", default=suppress, help="use TLS even on loopback"
    )
    group.add_argument(
        "--insecure", action="store_true", default=suppress, help="plaintext, even off loopback"
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=suppress,
        help=f"deadline of each call (default {DEFAULT_TIMEOUT:g})",
    )
    output = common.add_argument_group("output")
    output.add_argument(
        "--json", action="store_true", default=suppress, help="one JSON document on stdout"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _connection_options()
    parser = _Parser(
        prog=PROG,
        description="Manage secrets and config values of a vaultsvc vault; check and "
        "resolve tool templates; read the audit trail.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    groups = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)

    def command(
        subparsers: Any,
        name: str,
        handler: Callable[[argparse.Namespace], int],
        help_text: str,
        description: str | None = None,
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = subparsers.add_parser(
            name,
            help=help_text,
            description=description or help_text,
            parents=[common],
            epilog=_EXIT_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    # secrets
    secrets = groups.add_parser(
        "secrets", help="create, inspect, update and delete secrets", parents=[common]
    )
    secrets_commands = secrets.add_subparsers(
        title="secrets commands", metavar="ACTION", parser_class=_Parser
    )
    secrets.set_defaults(handler=_usage_of(secrets))

    create = command(
        secrets_commands,
        "create",
        _secrets_create,
        "Create a secret; the value is read from stdin or a no-echo prompt.",
    )
    create.add_argument("name")
    create.add_argument("--description", default="", help="free text, at most 1024 characters")
    _add_value_source(create, required=False)

    get = command(
        secrets_commands, "get", _secrets_get, "Show a secret's metadata (never a value)."
    )
    get.add_argument("name")

    listing = command(secrets_commands, "list", _secrets_list, "List secrets sorted by name.")
    listing.add_argument(
        "--contains",
        "--name-contains",
        dest="contains",
        default="",
        metavar="TEXT",
        help="only names containing TEXT (ignoring case)",
    )
    listing.add_argument(
        "--limit", type=_non_negative_int, default=0, help="at most N secrets (default: all)"
    )
    listing.add_argument("--page-size", type=_positive_int, default=100, help=argparse.SUPPRESS)

    update = command(
        secrets_commands,
        "update",
        _secrets_update,
        "Update a secret's description and/or value; what you do not ask to change is kept.",
    )
    update.add_argument("name")
    description = update.add_mutually_exclusive_group()
    description.add_argument("--description", default=None, help="new description")
    description.add_argument(
        "--clear-description", action="store_true", help="remove the description"
    )
    _add_value_source(update, required=True)
    update.add_argument("--etag", default="", help="fail (exit 6) unless the secret has this etag")

    delete = command(secrets_commands, "delete", _secrets_delete, "Delete a secret (hard delete).")
    delete.add_argument("name")
    delete.add_argument("--etag", default="", help="fail (exit 6) unless the secret has this etag")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    command(secrets_commands, "stats", _secrets_stats, "Show vault-wide counters.")

    # configs
    configs = groups.add_parser(
        "configs", help="manage non-sensitive config values", parents=[common]
    )
    configs_commands = configs.add_subparsers(
        title="configs commands", metavar="ACTION", parser_class=_Parser
    )
    configs.set_defaults(handler=_usage_of(configs))

    put = command(
        configs_commands,
        "put",
        _configs_put,
        "Create or replace a config value.",
        "Create or replace a config value. Config values are NOT secret: anyone with a "
        "viewer token can read them. Without VALUE, it is read from stdin (or asked).",
    )
    put.add_argument("key")
    put.add_argument("value", nargs="?", default=None)
    put.add_argument("--description", default="")

    config_get = command(configs_commands, "get", _configs_get, "Show a config value.")
    config_get.add_argument("key")

    config_list = command(configs_commands, "list", _configs_list, "List config values.")
    config_list.add_argument(
        "--contains",
        "--key-contains",
        dest="contains",
        default="",
        metavar="TEXT",
        help="only keys containing TEXT (ignoring case)",
    )
    config_list.add_argument(
        "--limit", type=_non_negative_int, default=0, help="at most N values (default: all)"
    )
    config_list.add_argument("--page-size", type=_positive_int, default=100, help=argparse.SUPPRESS)

    config_delete = command(configs_commands, "delete", _configs_delete, "Delete a config value.")
    config_delete.add_argument("key")
    config_delete.add_argument("-y", "--yes", action="store_true", help="do not ask")

    # templates
    template_help = (
        'FILE is JSON: {"fields": [{"key": "url", "template": "...", '
        '"encoding": "URL"}]} (encodings RAW, URL, HEADER, JSON, FORM), or a plain '
        '{"key": "template"} object (RAW). \'-\' reads stdin.'
    )
    check = command(
        groups,
        "check",
        _check,
        "Lint a tool's templates (exit 9 on problems).",
        "Lint a tool's templates: list what each field references and report missing "
        "secrets/configs and malformed placeholders (exit 9 when there are problems). "
        "Resolves nothing. " + template_help,
    )
    check.add_argument("file", metavar="FILE")

    resolve = command(
        groups,
        "resolve",
        _resolve,
        "Resolve a tool's templates and PRINT THE VALUES (resolver token).",
        "Resolve a tool's templates with a resolver token and print the fields WITH "
        "their values on stdout. " + template_help + " The structured form may also "
        'hold "inputs" and "tool".',
    )
    resolve.add_argument("file", metavar="FILE")
    resolve.add_argument(
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a value for {{input.NAME}} (repeatable)",
    )
    resolve.add_argument("--tool", default=None, help="the calling tool's id (for audit)")

    # audit
    audit = command(groups, "audit", _audit, "Show audit events, newest first.")
    audit.add_argument("--secret", default="", metavar="NAME", help="events naming this secret")
    audit.add_argument("--principal", default="", help="events of this principal")
    audit.add_argument(
        "--limit", type=_non_negative_int, default=50, help="at most N events (0: all; default 50)"
    )
    audit.add_argument("--page-size", type=_positive_int, default=100, help=argparse.SUPPRESS)
    return parser


def _add_value_source(parser: argparse.ArgumentParser, *, required: bool) -> None:
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


def _usage_of(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def usage(_: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    return usage


def _positive_int(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _non_negative_int(text: str) -> int:
    number = int(text)
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number


def _version() -> str:
    try:
        return metadata.version("vaultsvc-client")
    except metadata.PackageNotFoundError:
        return "unknown"


# -- connection ------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> VaultClient:
    address = getattr(args, "addr", None) or os.environ.get("VAULT_ADDR") or DEFAULT_ADDRESS
    token = _token(args)
    timeout = getattr(args, "timeout", DEFAULT_TIMEOUT)
    if not timeout > 0:
        raise CliError("--timeout must be positive")
    ca_file = getattr(args, "ca_file", None) or os.environ.get("VAULT_CACERT") or None
    cert_file = getattr(args, "cert_file", None) or os.environ.get("VAULT_CLIENT_CERT") or None
    key_file = getattr(args, "key_file", None) or os.environ.get("VAULT_CLIENT_KEY") or None
    server_name = getattr(args, "server_name", None)
    insecure: bool | None = None
    if getattr(args, "insecure", False) and getattr(args, "tls", False):
        raise CliError("give either --tls or --insecure, not both")
    if getattr(args, "insecure", False):
        insecure = True
    elif getattr(args, "tls", False):
        insecure = False
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


def _token(args: argparse.Namespace) -> str | None:
    token: str | None = getattr(args, "token", None)
    token_file: str | None = getattr(args, "token_file", None)
    if token is not None and token_file is not None:
        raise CliError("give either --token or --token-file, not both")
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read token file {token_file}") from exc
        if not token:
            raise CliError(f"token file {token_file} is empty")
    if token is None:
        token = os.environ.get("VAULT_TOKEN") or None
    return token.strip() if token else None


# -- secrets ---------------------------------------------------------------------------


def _secrets_create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        value = _read_secret_value(args, f"Value for secret {args.name}: ")
        secret = client.create_secret(args.name, value, args.description)
    _emit(args, _secret_dict(secret), f"created secret {secret.name} (etag {secret.etag})")
    return EXIT_OK


def _secrets_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        secret = client.get_secret(args.name)
    data = _secret_dict(secret)
    _emit(args, data, _vertical(data))
    return EXIT_OK


def _secrets_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        first = client.list_secrets(args.contains, page_size=args.page_size)
        secrets = _collect(
            first.secrets,
            first.next_page_token,
            lambda token: _page(
                client.list_secrets(args.contains, args.page_size, token), "secrets"
            ),
            args.limit,
        )
    rows = [_secret_dict(secret) for secret in secrets]
    if _wants_json(args):
        _print_json({"secrets": rows, "total_size": first.total_size})
    else:
        _print_table(
            ["NAME", "DESCRIPTION", "UPDATED", "ETAG"],
            [[r["name"], r["description"], r["update_time"], r["etag"]] for r in rows],
        )
        _note(f"{len(rows)} of {first.total_size} secret(s)")
    return EXIT_OK


def _secrets_update(args: argparse.Namespace) -> int:
    description: str | None = args.description
    if args.clear_description:
        description = ""
    changes_value = args.value_stdin or args.prompt_value
    if description is None and not changes_value:
        raise CliError(
            "nothing to update: give --description, --clear-description, "
            "--value-stdin or --prompt-value"
        )
    with _client(args) as client:
        value = None
        if changes_value:
            value = _read_secret_value(args, f"New value for secret {args.name}: ")
        secret = client.update_secret(args.name, value, description, args.etag)
    _emit(args, _secret_dict(secret), f"updated secret {secret.name} (etag {secret.etag})")
    return EXIT_OK


def _secrets_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _confirm_delete(args, "secret", args.name)
        client.delete_secret(args.name, args.etag)
    _emit(args, {"deleted": args.name}, f"deleted secret {args.name}")
    return EXIT_OK


def _secrets_stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        stats = client.get_vault_stats()
    data: dict[str, Any] = {
        "total_secrets": int(stats.total_secrets),
        "last_update_time": _time(stats, "last_update_time"),
    }
    human = {
        "total secrets": str(data["total_secrets"]),
        "last update": data["last_update_time"] or "never",
    }
    _emit(args, data, _vertical(human))
    return EXIT_OK


# -- configs ---------------------------------------------------------------------------


def _configs_put(args: argparse.Namespace) -> int:
    with _client(args) as client:
        value: str | None = args.value
        if value is None:
            if _is_tty(sys.stdin):
                print(f"Value for config {args.key}: ", end="", file=sys.stderr, flush=True)
                value = sys.stdin.readline().rstrip("\r\n")
            else:
                value = _read_stdin_text(MAX_VALUE_BYTES, "value")
        config = client.put_config_value(args.key, value, args.description)
    _emit(args, _config_dict(config), f"stored config {config.key}")
    return EXIT_OK


def _configs_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        config = client.get_config_value(args.key)
    data = _config_dict(config)
    _emit(args, data, _vertical(data))
    return EXIT_OK


def _configs_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        first = client.list_config_values(args.contains, page_size=args.page_size)
        configs = _collect(
            first.config_values,
            first.next_page_token,
            lambda token: _page(
                client.list_config_values(args.contains, args.page_size, token), "config_values"
            ),
            args.limit,
        )
    rows = [_config_dict(config) for config in configs]
    if _wants_json(args):
        _print_json({"config_values": rows, "total_size": first.total_size})
    else:
        _print_table(
            ["KEY", "VALUE", "DESCRIPTION", "UPDATED"],
            [[r["key"], r["value"], r["description"], r["update_time"]] for r in rows],
        )
        _note(f"{len(rows)} of {first.total_size} config value(s)")
    return EXIT_OK


def _configs_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _confirm_delete(args, "config value", args.key)
        client.delete_config_value(args.key)
    _emit(args, {"deleted": args.key}, f"deleted config {args.key}")
    return EXIT_OK


# -- templates -------------------------------------------------------------------------


@dataclass
class TemplateFile:
    fields: list[resolver_pb.TemplateField]
    inputs: dict[str, str]
    tool: str


def load_template_file(path: str) -> TemplateFile:
    """Reads a check/resolve FILE (``-`` is stdin); raises CliError on bad input."""
    if path == "-":
        text = _read_stdin_text(MAX_FILE_BYTES, "template file")
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read {path}: {_reason(exc)}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{path} is not valid JSON (line {exc.lineno} column {exc.colno})") from exc
    return parse_template_document(document, path)


def parse_template_document(document: object, source: str = "FILE") -> TemplateFile:
    """The structured form ``{"fields": [...], "inputs"?, "tool"?}`` or ``{key: template}``."""
    if not isinstance(document, dict):
        raise CliError(f"{source}: expected a JSON object")
    inputs: dict[str, str] = {}
    tool = ""
    if isinstance(document.get("fields"), list):
        unknown = set(document) - {"fields", "inputs", "tool"}
        if unknown:
            raise CliError(f"{source}: unknown top-level key(s): {', '.join(sorted(unknown))}")
        raw_fields: Any = document["fields"]
        for index, field in enumerate(raw_fields):
            if not isinstance(field, dict):
                raise CliError(f"{source}: fields[{index}] is not an object")
        raw_inputs = document.get("inputs", {})
        if not isinstance(raw_inputs, dict) or not all(
            isinstance(v, str) for v in raw_inputs.values()
        ):
            raise CliError(f"{source}: inputs must be an object of strings")
        inputs = {str(k): v for k, v in raw_inputs.items()}
        raw_tool = document.get("tool", "")
        if not isinstance(raw_tool, str):
            raise CliError(f"{source}: tool must be a string")
        tool = raw_tool
    elif all(isinstance(value, str) for value in document.values()):
        raw_fields = {str(k): v for k, v in document.items()}
    else:
        raise CliError(
            f'{source}: expected {{"fields": [...]}} or an object mapping keys to templates'
        )
    try:
        fields = template_fields(raw_fields)
    except (ValueError, TypeError) as exc:
        raise CliError(f"{source}: {exc}") from exc
    if not fields:
        raise CliError(f"{source}: no fields")
    return TemplateFile(fields, inputs, tool)


def _check(args: argparse.Namespace) -> int:
    template = load_template_file(args.file)
    with _client(args) as client:
        response = client.check_template(template.fields)
    encodings = [encoding_name(field.encoding) for field in template.fields]
    references: list[dict[str, Any]] = [
        {
            "key": ref.key,
            "encoding": encodings[index] if index < len(encodings) else "",
            "secret_names": list(ref.secret_names),
            "config_keys": list(ref.config_keys),
            "input_names": list(ref.input_names),
        }
        for index, ref in enumerate(response.references)
    ]
    problems: list[dict[str, Any]] = [
        {
            "field_key": problem.field_key,
            "kind": _problem_kind(problem.kind),
            "placeholder": problem.placeholder,
            "name": problem.name,
            "message": problem.message,
            "offset": int(problem.offset),
        }
        for problem in response.problems
    ]
    if _wants_json(args):
        _print_json({"ok": not problems, "references": references, "problems": problems})
    else:
        _print_table(
            ["FIELD", "ENCODING", "SECRETS", "CONFIGS", "INPUTS"],
            [
                [
                    ref["key"],
                    ref["encoding"],
                    ", ".join(ref["secret_names"]) or "-",
                    ", ".join(ref["config_keys"]) or "-",
                    ", ".join(ref["input_names"]) or "-",
                ]
                for ref in references
            ],
        )
        if problems:
            print(f"\n{len(problems)} problem(s):")
            for p in problems:
                where = f"{p['field_key']}@{p['offset']}"
                print(f"  {_cell(where)}: {p['kind']}: {_cell(p['message'] or p['placeholder'])}")
        else:
            print("\nno problems")
    return EXIT_PROBLEMS if problems else EXIT_OK


def _resolve(args: argparse.Namespace) -> int:
    template = load_template_file(args.file)
    inputs = dict(template.inputs)
    for item in args.inputs:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"--input expects NAME=VALUE, got {name or '(empty)'!r}")
        inputs[name] = value
    tool = args.tool if args.tool is not None else template.tool
    with _client(args) as client:
        response = client.resolve_template(template.fields, inputs, tool)
    fields = [{"key": field.key, "value": field.value} for field in response.fields]
    if _wants_json(args):
        _print_json({"fields": fields})
    else:
        for field in fields:
            sys.stdout.write(f"{field['key']}: {field['value']}\n")
    return EXIT_OK


# -- audit -----------------------------------------------------------------------------


def _audit(args: argparse.Namespace) -> int:
    with _client(args) as client:
        first = client.list_audit_events(args.secret, args.principal, args.page_size)
        events = _collect(
            first.events,
            first.next_page_token,
            lambda token: _page(
                client.list_audit_events(args.secret, args.principal, args.page_size, token),
                "events",
            ),
            args.limit,
        )
    rows = [
        {
            "time": _time(event, "time"),
            "principal": event.principal,
            "method": event.method,
            "outcome": event.outcome,
            "secret_names": list(event.secret_names),
            "tool": event.tool,
            "request_id": event.request_id,
            "peer": event.peer,
        }
        for event in events
    ]
    if _wants_json(args):
        _print_json({"events": rows})
    else:
        _print_table(
            ["TIME", "PRINCIPAL", "METHOD", "OUTCOME", "SECRETS", "TOOL", "REQUEST"],
            [
                [
                    r["time"] or "",
                    r["principal"],
                    r["method"].rsplit(".", 1)[-1],
                    r["outcome"],
                    ", ".join(r["secret_names"]),
                    r["tool"],
                    r["request_id"],
                ]
                for r in rows
            ],
        )
    return EXIT_OK


# -- input -----------------------------------------------------------------------------


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _read_secret_value(args: argparse.Namespace, prompt: str) -> str:
    """The value from stdin (not a terminal, or --value-stdin) or the no-echo prompt."""
    use_prompt = args.prompt_value or (not args.value_stdin and _is_tty(sys.stdin))
    if use_prompt:
        value = getpass.getpass(prompt)
        if not value:
            raise CliError("empty value")
        if getpass.getpass("Repeat the value: ") != value:
            raise CliError("the two values do not match")
        return value
    value = _read_stdin_text(MAX_VALUE_BYTES, "value")
    if args.trim_newline:
        value = value.removesuffix("\n").removesuffix("\r")
    elif value.endswith("\n"):
        _note("note: the value read from stdin ends with a newline (kept; --trim-newline drops it)")
    if not value:
        raise CliError("empty value on stdin")
    return value


def _read_stdin_text(limit: int, what: str) -> str:
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


def _confirm_delete(args: argparse.Namespace, kind: str, name: str) -> None:
    if args.yes:
        return
    if not _is_tty(sys.stdin):
        raise CliError(
            f"refusing to delete {kind} {name} without confirmation: stdin is not a "
            "terminal; pass --yes"
        )
    print(
        f"This permanently deletes {kind} {name!r}. Type its name to confirm: ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    answer = sys.stdin.readline().strip()
    if answer != name:
        raise CliError("confirmation did not match; nothing deleted", EXIT_USAGE, "aborted")


# -- output ----------------------------------------------------------------------------


def _wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _emit(args: argparse.Namespace, data: Mapping[str, Any], human: str) -> None:
    if _wants_json(args):
        _print_json(data)
    else:
        print(human)


def _print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _note(text: str) -> None:
    print(text, file=sys.stderr)


def _cell(text: str) -> str:
    """Control characters shown escaped, so table cells stay on one line and inert."""
    if text.isprintable():
        return text
    return "".join(
        ch
        if ch.isprintable() or unicodedata.category(ch) == "Zs"
        else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def _print_table(headers: list[str], rows: Iterable[Sequence[str | None]]) -> None:
    cells = [headers] + [[_cell(cell or "") for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _vertical(data: Mapping[str, Any]) -> str:
    width = max(len(key) for key in data)
    lines = []
    for key, value in data.items():
        shown = "" if value is None else str(value)
        lines.append(f"{key.ljust(width)}  {_cell(shown)}".rstrip())
    return "\n".join(lines)


def _time(message: Any, field: str) -> str | None:
    if not message.HasField(field):
        return None
    stamp = getattr(message, field)
    moment = stamp.ToDatetime(tzinfo=UTC)
    return str(moment.isoformat().replace("+00:00", "Z"))


def _secret_dict(secret: Any) -> dict[str, Any]:
    return {
        "name": secret.name,
        "description": secret.description,
        "create_time": _time(secret, "create_time"),
        "update_time": _time(secret, "update_time"),
        "etag": secret.etag,
    }


def _config_dict(config: Any) -> dict[str, Any]:
    return {
        "key": config.key,
        "value": config.value,
        "description": config.description,
        "create_time": _time(config, "create_time"),
        "update_time": _time(config, "update_time"),
    }


def _problem_kind(kind: resolver_pb.ProblemKind.ValueType) -> str:
    try:
        name = str(resolver_pb.ProblemKind.Name(kind))
    except ValueError:
        return str(kind)
    return name.removeprefix("PROBLEM_KIND_")


def _page(response: Any, field: str) -> tuple[list[Any], str]:
    return list(getattr(response, field)), str(response.next_page_token)


def _collect(
    first: Iterable[Any],
    next_token: str,
    fetch: Callable[[str], tuple[list[Any], str]],
    limit: int,
) -> list[Any]:
    items = list(first)
    while next_token and (limit == 0 or len(items) < limit):
        page, next_token = fetch(next_token)
        items.extend(page)
    return items[:limit] if limit else items


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
