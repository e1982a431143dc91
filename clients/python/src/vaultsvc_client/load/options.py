"""Options of ``vaultctl load``: the argparse surface and its validation.

Connection options are the same as the rest of vaultctl (``--addr`` / ``VAULT_ADDR``,
``--token`` / ``VAULT_TOKEN``, TLS files, ``--timeout``); they default to
``argparse.SUPPRESS`` so that, wired under vaultctl, options given before the
subcommand survive. Everything is checked here, before any connection is made:
a bad combination is a usage error (exit 2) with one clear line.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .._common import DEFAULT_ADDRESS, DEFAULT_TIMEOUT, TLSConfig

__all__ = [
    "EXIT_CALLS_FAILED",
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SETUP_FAILED",
    "EXIT_USAGE",
    "LoadOptions",
    "LoadUsageError",
    "configure_parser",
    "options_from_args",
    "parse_duration",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CALLS_FAILED = 10
EXIT_SETUP_FAILED = 11
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "the run finished and every call succeeded",
    EXIT_ERROR: "an unexpected error in the tool itself",
    EXIT_USAGE: "usage error (bad or contradictory options, unreadable template file)",
    EXIT_CALLS_FAILED: "the run finished and at least one call failed (see the report)",
    EXIT_SETUP_FAILED: "setup or cleanup failed: could not connect, seed secrets, "
    "or remove every seeded secret",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C or SIGTERM); partial report printed, "
    "seeded secrets removed",
}

DEFAULT_DURATION = 10.0
DEFAULT_CONCURRENCY = 16
DEFAULT_VALUE_SIZE = 32
MAX_VALUE_SIZE = 64 * 1024
MAX_SEED_SECRETS = 1_000_000
MAX_PROCS = 256
DEFAULT_TOOL = "vaultctl-load"

NamesMode = Literal["same", "random"]
OutputFormat = Literal["text", "json"]


class LoadUsageError(Exception):
    """Bad or contradictory options; the message is one line for the user."""


@dataclass(frozen=True)
class LoadOptions:
    """Everything a run needs, validated; picklable (sent to worker processes)."""

    address: str
    token: str | None
    tls: TLSConfig | None
    insecure: bool | None
    timeout: float
    concurrency: int
    connections: int
    procs: int
    duration: float | None
    total: int | None
    rps: float | None
    template_file: str | None
    secrets: tuple[str, ...]
    seed_secrets: int
    value_size: int
    names: NamesMode
    admin_token: str | None
    tool: str
    output: OutputFormat
    progress: bool | None


_DURATION = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``10``, ``10s``, ``500ms``, ``2m``, ``1h`` -> seconds (positive and finite)."""
    match = _DURATION.match(text)
    if match is None:
        raise LoadUsageError(f"--duration {text!r}: expected a number with ms, s, m or h")
    seconds = float(match.group("number")) * _UNITS[match.group("unit")]
    if not seconds > 0 or not math.isfinite(seconds):
        raise LoadUsageError("--duration must be positive")
    return seconds


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except LoadUsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_arg(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


def _rate_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected calls per second, not {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError("must be a positive number of calls per second")
    return value


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """vaultctl's connection options (SUPPRESS defaults: given before the command, kept)."""
    group = parser.add_argument_group("connection")
    suppress = argparse.SUPPRESS
    group.add_argument(
        "--addr", metavar="HOST:PORT", default=suppress, help="server (env VAULT_ADDR)"
    )
    group.add_argument(
        "--token", default=suppress, help="resolver token for the load (env VAULT_TOKEN)"
    )
    group.add_argument(
        "--token-file", metavar="FILE", default=suppress, help="read the resolver token from FILE"
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


def configure_parser(parser: argparse.ArgumentParser, *, connection_options: bool = True) -> None:
    """Adds the load options to ``parser`` (and vaultctl's connection options unless
    the caller's parser already has them)."""
    if connection_options:
        add_connection_options(parser)

    load = parser.add_argument_group("load")
    load.add_argument(
        "-c",
        "--concurrency",
        type=_int_arg(1),
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"calls in flight at once, over all processes (default {DEFAULT_CONCURRENCY})",
    )
    load.add_argument(
        "--connections",
        type=_int_arg(1),
        default=1,
        metavar="N",
        help="gRPC connections (channels) over all processes, each process having at "
        "least one; a process's workers share its connections round robin "
        "(default 1; at most --concurrency)",
    )
    amount = load.add_mutually_exclusive_group()
    amount.add_argument(
        "-z",
        "--duration",
        type=_duration_arg,
        default=None,
        metavar="TIME",
        help=f"run this long: 30, 30s, 500ms, 2m (default {DEFAULT_DURATION:g}s)",
    )
    amount.add_argument(
        "-n", "--total", type=_int_arg(1), default=None, metavar="N", help="make exactly N calls"
    )
    load.add_argument(
        "--rps",
        type=_rate_arg,
        default=None,
        metavar="R",
        help="open loop: start calls on a fixed schedule of R per second (over all "
        "processes); latency counts from each call's intended start, so a slow "
        "server cannot hide its queueing (no coordinated omission)",
    )
    load.add_argument(
        "--procs",
        type=_int_arg(1),
        default=1,
        metavar="N",
        help="client processes (default 1); their HDR histograms are merged",
    )

    scenario = parser.add_argument_group("scenario")
    scenario.add_argument(
        "--template-file",
        metavar="FILE",
        default=None,
        help='JSON {"fields": [{"key", "template", "encoding"}], "inputs": {...}, '
        '"tool"?}; {{secret:$1}}, {{secret:$2}}... stand for the secrets picked for '
        "each request (default: the built-in seed-shaped scenario: URL, "
        "Authorization header and JSON body with 3 secrets)",
    )
    scenario.add_argument(
        "--secret",
        dest="secrets",
        action="append",
        default=[],
        metavar="NAME",
        help="an existing secret for the scenario's slots (repeatable)",
    )
    scenario.add_argument(
        "--seed-secrets",
        type=_int_arg(1),
        default=0,
        metavar="N",
        help="create N secrets with random values before the run (admin token) and "
        "remove them for good afterwards, also on Ctrl-C or errors",
    )
    scenario.add_argument(
        "--value-size",
        type=_int_arg(1),
        default=None,
        metavar="BYTES",
        help=f"size of each seeded value (default {DEFAULT_VALUE_SIZE}, at most {MAX_VALUE_SIZE})",
    )
    scenario.add_argument(
        "--names",
        choices=["same", "random"],
        default="same",
        help="same: every request uses the same secrets; random: each request picks "
        "its secrets at random among the pool (default same)",
    )
    scenario.add_argument(
        "--admin-token",
        metavar="TOKEN",
        default=None,
        help="admin token for --seed-secrets (env VAULT_ADMIN_TOKEN)",
    )
    scenario.add_argument(
        "--admin-token-file", metavar="FILE", default=None, help="read the admin token from FILE"
    )
    scenario.add_argument(
        "--tool", default=None, help=f"tool id sent with each call (default {DEFAULT_TOOL})"
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--format",
        dest="output_format",
        choices=["text", "json"],
        default=None,
        help="final report as text (default) or one JSON document on stdout",
    )
    output.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live one-line progress on stderr (default: only when stderr is a terminal)",
    )


def options_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> LoadOptions:
    """Validates parsed arguments; raises :class:`LoadUsageError`."""
    env = os.environ if environ is None else environ
    address = getattr(args, "addr", None) or env.get("VAULT_ADDR") or DEFAULT_ADDRESS
    timeout = getattr(args, "timeout", DEFAULT_TIMEOUT)
    if not (timeout > 0 and math.isfinite(timeout)):
        raise LoadUsageError("--timeout must be a positive number of seconds")

    token = _read_token(
        getattr(args, "token", None),
        getattr(args, "token_file", None),
        "--token",
        env,
        "VAULT_TOKEN",
    )
    tls, insecure = _tls(args, env)

    concurrency: int = args.concurrency
    connections: int = args.connections
    procs: int = args.procs
    if connections > concurrency:
        raise LoadUsageError(
            f"--connections ({connections}) cannot exceed --concurrency ({concurrency}): "
            "a connection without a worker carries no calls"
        )
    if procs > MAX_PROCS:
        raise LoadUsageError(f"--procs is at most {MAX_PROCS}")
    if procs > concurrency:
        raise LoadUsageError(
            f"--procs ({procs}) cannot exceed --concurrency ({concurrency}): "
            "each process needs at least one worker"
        )
    total: int | None = args.total
    duration: float | None = args.duration
    if total is None and duration is None:
        duration = DEFAULT_DURATION
    if total is not None and total < procs:
        raise LoadUsageError(f"--total ({total}) must be at least --procs ({procs})")

    seed: int = args.seed_secrets
    secrets = tuple(args.secrets)
    for name in secrets:
        if not name or any(ch.isspace() or ch in "{}" for ch in name):
            raise LoadUsageError("--secret takes a secret name")
    if seed and secrets:
        raise LoadUsageError("give either --seed-secrets or --secret, not both")
    if seed > MAX_SEED_SECRETS:
        raise LoadUsageError(f"--seed-secrets is at most {MAX_SEED_SECRETS}")
    value_size: int | None = args.value_size
    if value_size is not None and not seed:
        raise LoadUsageError("--value-size needs --seed-secrets")
    if value_size is not None and value_size > MAX_VALUE_SIZE:
        raise LoadUsageError(f"--value-size is at most {MAX_VALUE_SIZE} bytes")
    admin_token = _read_token(
        args.admin_token, args.admin_token_file, "--admin-token", env, "VAULT_ADMIN_TOKEN"
    )
    if seed and not admin_token:
        raise LoadUsageError(
            "--seed-secrets needs an admin token: --admin-token, --admin-token-file "
            "or VAULT_ADMIN_TOKEN"
        )
    if args.template_file is not None and not Path(args.template_file).is_file():
        raise LoadUsageError(f"--template-file {args.template_file}: no such file")

    output: OutputFormat = "json" if getattr(args, "json", False) else "text"
    if args.output_format is not None:
        output = args.output_format

    return LoadOptions(
        address=address,
        token=token,
        tls=tls,
        insecure=insecure,
        timeout=float(timeout),
        concurrency=concurrency,
        connections=connections,
        procs=procs,
        duration=duration,
        total=total,
        rps=args.rps,
        template_file=args.template_file,
        secrets=secrets,
        seed_secrets=seed,
        value_size=value_size if value_size is not None else DEFAULT_VALUE_SIZE,
        names=args.names,
        admin_token=admin_token,
        tool=args.tool if args.tool is not None else DEFAULT_TOOL,
        output=output,
        progress=args.progress,
    )


def _read_token(
    token: str | None,
    token_file: str | None,
    flag: str,
    env: Mapping[str, str],
    variable: str,
) -> str | None:
    if token is not None and token_file is not None:
        raise LoadUsageError(f"give either {flag} or {flag}-file, not both")
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            raise LoadUsageError(f"cannot read token file {token_file}") from None
        if not token:
            raise LoadUsageError(f"token file {token_file} is empty")
    if token is None:
        token = env.get(variable) or None
    token = token.strip() if token else None
    if token and any(ch.isspace() for ch in token):
        raise LoadUsageError(f"the token of {flag} must not contain whitespace")
    return token


def _tls(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[TLSConfig | None, bool | None]:
    """The same TLS rules as vaultctl: TLS files or --tls imply TLS; --insecure forces plaintext."""
    ca_file = getattr(args, "ca_file", None) or env.get("VAULT_CACERT") or None
    cert_file = getattr(args, "cert_file", None) or env.get("VAULT_CLIENT_CERT") or None
    key_file = getattr(args, "key_file", None) or env.get("VAULT_CLIENT_KEY") or None
    server_name = getattr(args, "server_name", None)
    want_insecure = bool(getattr(args, "insecure", False))
    want_tls = bool(getattr(args, "tls", False))
    if want_insecure and want_tls:
        raise LoadUsageError("give either --tls or --insecure, not both")
    insecure: bool | None = True if want_insecure else (False if want_tls else None)
    if not (ca_file or cert_file or key_file or server_name or insecure is False):
        return None, insecure
    if insecure:
        raise LoadUsageError("--insecure cannot be combined with TLS options")
    try:
        return TLSConfig.from_files(ca_file, cert_file, key_file, server_name), insecure
    except OSError as exc:
        raise LoadUsageError(f"cannot read TLS file: {exc.strerror}: {exc.filename}") from None
    except ValueError as exc:
        raise LoadUsageError(str(exc)) from None


def exit_codes_epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:<3}  {text}" for code, text in EXIT_CODES.items())


def shares(total: int, parts: int) -> Sequence[int]:
    """``total`` split over ``parts`` as evenly as possible, larger shares first."""
    return [(total - index + parts - 1) // parts for index in range(parts)]
