"""``health``: is the local vault ready? (the container HEALTHCHECK; API.md "Health").

Asks ``grpc.health.v1.Health/Check`` for service ``""`` (readiness: NOT_SERVING while
draining or after the database was unreachable for ``health_db_grace``) or, with
``--service liveness``, for the process's liveness. Exit 0 only for SERVING; 1 for any other
status, an unreachable vault or a missed deadline; 2 for bad arguments. One call, bounded by
``--timeout`` (never waits for the server to come up).

The address is ``--address``, else ``VAULT_LISTEN`` with a wildcard host (``0.0.0.0``,
``[::]``) replaced by loopback, else the default listen address. TLS: ``--tls-ca-file``
turns it on (the CA that signed the server's certificate); ``--tls-server-name`` names the
certificate's host when it is not the address's; ``--tls-cert-file``/``--tls-key-file`` give a
client certificate when the vault requires one (``tls.require_client_cert``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vaultsvc.cli.common import EXIT_CONFIG, EXIT_OK, Subparsers, fail
from vaultsvc.config import SETTINGS_BY_KEY, ConfigError, parse_address

EXIT_UNHEALTHY = 1
MAX_TIMEOUT = 60.0
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}  # noqa: S104


def register(sub: Subparsers) -> None:
    health = sub.add_parser(
        "health",
        help="exit 0 when the local vault is ready (container HEALTHCHECK)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    health.add_argument(
        "--address",
        help="host:port of the vault (default: VAULT_LISTEN, wildcard host -> loopback, "
        f"else {SETTINGS_BY_KEY['listen'].default})",
    )
    health.add_argument(
        "--service",
        default="",
        help='health service to ask: "" = readiness (default), "liveness" = process alive',
    )
    health.add_argument(
        "--timeout",
        type=_timeout,
        default=3.0,
        help=f"deadline of the check in seconds (default 3, at most {MAX_TIMEOUT:g})",
    )
    health.add_argument("--tls-ca-file", type=Path, help="CA certificate (PEM): use TLS")
    health.add_argument("--tls-server-name", help="host name the server certificate names")
    health.add_argument("--tls-cert-file", type=Path, help="client certificate (PEM), for mTLS")
    health.add_argument("--tls-key-file", type=Path, help="client private key (PEM), for mTLS")
    health.set_defaults(func=cmd_health)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, {MAX_TIMEOUT:g}]")
    return value


def local_address(listen: str) -> str:
    """Where a process on this host reaches a vault listening on ``listen``."""
    host, _, port = listen.rpartition(":")
    if port == "0":
        raise ConfigError(f"cannot check {listen}: port 0 means any free port; pass --address")
    return f"{_WILDCARDS.get(host, host)}:{port}"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _channel(args: argparse.Namespace, address: str) -> grpc.Channel:
    if args.tls_ca_file is None:
        if args.tls_cert_file or args.tls_key_file or args.tls_server_name:
            raise ConfigError(
                "--tls-cert-file, --tls-key-file and --tls-server-name need --tls-ca-file"
            )
        return grpc.insecure_channel(address)
    if (args.tls_cert_file is None) != (args.tls_key_file is None):
        raise ConfigError("give both --tls-cert-file and --tls-key-file, or neither")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(args.tls_ca_file, "CA file"),
        private_key=_read(args.tls_key_file, "key file") if args.tls_key_file else None,
        certificate_chain=_read(args.tls_cert_file, "certificate file")
        if args.tls_cert_file
        else None,
    )
    options = (
        [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    )
    return grpc.secure_channel(address, credentials, options=options)


def cmd_health(args: argparse.Namespace) -> int:
    try:
        if args.address is not None:
            address = parse_address(args.address, "--address")
        else:
            listen = os.environ.get("VAULT_LISTEN", "") or SETTINGS_BY_KEY["listen"].default
            address = local_address(parse_address(listen, "VAULT_LISTEN"))
        channel = _channel(args, address)
    except ConfigError as exc:
        return fail(str(exc), EXIT_CONFIG)
    name = args.service or '""'
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            shown = code.name if code is not None else type(exc).__name__
            return fail(f"health {name} at {address}: {shown}", EXIT_UNHEALTHY)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return fail(f"health {name} at {address}: {status}", EXIT_UNHEALTHY)
    print(f"{status} ({name} at {address})")
    return EXIT_OK
