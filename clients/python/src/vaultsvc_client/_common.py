"""What the sync and async clients share: options, channel set-up, request building."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias, cast

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from interakt.vault.v1 import access_service_pb2 as access_pb
from interakt.vault.v1 import audit_service_pb2 as audit_pb
from interakt.vault.v1 import config_service_pb2 as config_pb
from interakt.vault.v1 import resolver_service_pb2 as resolver_pb
from interakt.vault.v1 import secret_service_pb2 as secret_pb

from .errors import NotFound, VaultError

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 10.0
DEFAULT_PAGE_SIZE = 100

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    # A resolve answer can be larger than its request (values are substituted in).
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.primary_user_agent", "vaultsvc-client/0.1"),
]

EncodingLike: TypeAlias = "int | str"
"""An ``Encoding`` enum value, or its name: ``"URL"``, ``"encoding_url"``, ``"ENCODING_URL"``."""

FieldLike: TypeAlias = (
    "resolver_pb.TemplateField | tuple[str, str] | tuple[str, str, int | str] | Mapping[str, str]"
)
"""A template field: a ``TemplateField``, ``(key, template[, encoding])``, or
``{"key": ..., "template": ..., "encoding": ...}``."""

FieldsLike: TypeAlias = "Mapping[str, str] | Iterable[FieldLike]"
"""Fields of one tool invocation, or a plain ``{key: template}`` mapping (RAW encoding)."""


@dataclass(frozen=True)
class TLSConfig:
    """TLS material for the channel; all PEM bytes.

    ``root_certificates`` None uses the system trust store. Give
    ``certificate_chain`` and ``private_key`` together for mutual TLS.
    ``server_name`` overrides the name checked against the server certificate.
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("mutual TLS needs both a client certificate and its private key")

    @classmethod
    def from_files(
        cls,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
    ) -> TLSConfig:
        """Reads PEM files; any of them may be omitted."""

        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return cls(read(ca_file), read(cert_file), read(key_file), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def channel_options(self) -> list[tuple[str, int | str]]:
        if self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of UNAVAILABLE on idempotent calls, with capped exponential backoff.

    ``max_attempts`` counts the first try; 1 disables retries. Retries never
    outlive the call's deadline. Non-idempotent calls (update, delete, put) are
    never retried: an UNAVAILABLE after the request left may still have been
    applied. CreateSecret is retried: every try carries the same ``request_id``,
    so the server answers a retry with the first result.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoff must be non-negative and multiplier at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return base * (1 - self.jitter * random.random())


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class RpcPolicy:
    """How the clients call one RPC.

    ``idempotent``: calling it twice has the effect of calling it once, so an
    UNAVAILABLE is retried under the client's :class:`RetryPolicy`. Writes are
    not: an UNAVAILABLE after the request left may still have been applied.
    """

    idempotent: bool


READ = RpcPolicy(idempotent=True)
WRITE = RpcPolicy(idempotent=False)
WRITE_WITH_REQUEST_ID = RpcPolicy(idempotent=True)
"""A write whose tries share one ``request_id``: the server replays the first result."""

RPC_POLICIES: Mapping[str, RpcPolicy] = {
    "SecretService.CreateSecret": WRITE_WITH_REQUEST_ID,
    "SecretService.GetSecret": READ,
    "SecretService.ListSecrets": READ,
    "SecretService.UpdateSecret": WRITE,
    "SecretService.DeleteSecret": WRITE,
    "SecretService.GetVaultStats": READ,
    "SecretService.ListSecretVersions": READ,
    # A retried rollback could add two versions: written once, like every other write.
    "SecretService.RollbackSecret": WRITE,
    "SecretService.DestroySecretVersion": WRITE,
    "SecretService.RestoreSecret": WRITE,
    # Not retried: every attempt spends rate budget and is audited.
    "SecretService.IdentifySecretValue": WRITE,
    "ConfigService.PutConfigValue": WRITE,
    "ConfigService.GetConfigValue": READ,
    "ConfigService.ListConfigValues": READ,
    "ConfigService.DeleteConfigValue": WRITE,
    # Resolve only reads (its audit event is written once per answered call).
    "ResolverService.ResolveTemplate": READ,
    "ResolverService.CheckTemplate": READ,
    "AuditService.ListAuditEvents": READ,
    # A retried create could mint two tokens (the first one lost): never retried.
    "AccessService.CreateToken": WRITE,
    "AccessService.ListTokens": READ,
    "AccessService.RevokeToken": WRITE,
}
"""Every RPC of the contract, declared once: ``Service.Method`` -> policy."""

SERVICES: tuple[ServiceDescriptor, ...] = (
    secret_pb.DESCRIPTOR.services_by_name["SecretService"],
    config_pb.DESCRIPTOR.services_by_name["ConfigService"],
    resolver_pb.DESCRIPTOR.services_by_name["ResolverService"],
    audit_pb.DESCRIPTOR.services_by_name["AuditService"],
    access_pb.DESCRIPTOR.services_by_name["AccessService"],
)


def policies_by_method(stubs: Mapping[str, object]) -> dict[object, RpcPolicy]:
    """Maps each stub's bound RPC callables to their policy (as Google's transports do).

    ``stubs`` maps a service name to its stub. A contract RPC without an entry in
    :data:`RPC_POLICIES` fails here, at client construction, not at its first call.
    """
    table: dict[object, RpcPolicy] = {}
    for service in SERVICES:
        stub = stubs[service.name]
        for method in service.methods:
            key = f"{service.name}.{method.name}"
            if key not in RPC_POLICIES:
                raise LookupError(f"no RpcPolicy declared for {key}")
            table[getattr(stub, method.name)] = RPC_POLICIES[key]
    return table


def total_size_of(response: Message) -> int | None:
    """The reply's ``total_size`` (matches across all pages), None if it has no such field."""
    if "total_size" not in response.DESCRIPTOR.fields_by_name:
        return None
    size: Any = getattr(response, "total_size")  # noqa: B009 - not every reply has it
    return int(size)


def with_requested_names(error: VaultError, request: Message) -> VaultError:
    """A NOT_FOUND of a single-name RPC lists that name when ErrorInfo carried none.

    The name comes from the request the client sent (a name or key, never a value),
    not from the message text.
    """
    if isinstance(error, NotFound) and not error.names:
        fields = request.DESCRIPTOR.fields_by_name
        for field in ("name", "key"):
            if field in fields:
                requested = str(getattr(request, field))
                if requested:
                    error.names = [requested]
                break
    return error


def is_loopback(address: str) -> bool:
    """True for a gRPC target on this machine (unix socket, localhost, 127/8, ::1)."""
    target = address.strip()
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    for prefix in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(prefix):
            target = target[len(prefix) :]
            break
    if target.startswith("["):
        host = target[1:].split("]", 1)[0]
    elif target.count(":") == 1:
        host = target.rsplit(":", 1)[0]
    else:
        host = target
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def channel_security(
    address: str, tls: TLSConfig | None, insecure: bool | None
) -> TLSConfig | None:
    """Decides TLS or plaintext: ``None`` means plaintext.

    Explicit ``tls`` wins; ``insecure=True`` forces plaintext; otherwise
    plaintext only for a loopback address and TLS with the system roots anywhere
    else, so a token never crosses a network in clear by default.
    """
    if tls is not None:
        if insecure:
            raise ValueError("give either tls or insecure=True, not both")
        return tls
    if insecure is None:
        insecure = is_loopback(address)
    return None if insecure else TLSConfig()


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    if not token:
        return ()
    if any(ch.isspace() for ch in token):
        raise ValueError("token must not contain whitespace")
    return (("authorization", f"Bearer {token}"),)


def check_timeout(timeout: float) -> float:
    if not timeout > 0:
        raise ValueError("timeout must be a positive number of seconds")
    return float(timeout)


_ENCODINGS: dict[str, int] = {
    name.removeprefix("ENCODING_"): int(number) for name, number in resolver_pb.Encoding.items()
}


def parse_encoding(encoding: EncodingLike) -> resolver_pb.Encoding.ValueType:
    """``2``, ``"URL"``, ``"url"`` and ``"ENCODING_URL"`` all give ENCODING_URL."""
    if isinstance(encoding, bool):
        raise ValueError(f"unknown encoding {encoding!r}")
    if isinstance(encoding, int):
        if encoding not in _ENCODINGS.values():
            raise ValueError(f"unknown encoding {encoding}")
        number = encoding
    else:
        name = encoding.strip().upper().removeprefix("ENCODING_")
        if name not in _ENCODINGS:
            known = ", ".join(sorted(_ENCODINGS))
            raise ValueError(f"unknown encoding {encoding!r} (known: {known})")
        number = _ENCODINGS[name]
    return cast("resolver_pb.Encoding.ValueType", number)


def encoding_name(encoding: int) -> str:
    for name, number in _ENCODINGS.items():
        if number == encoding:
            return name
    return str(encoding)


def audit_events_request(
    secret_name: str,
    principal: str,
    page_size: int,
    page_token: str,
    *,
    start_time: datetime | None,
    end_time: datetime | None,
    method: str,
    outcome: str,
    tool: str,
) -> audit_pb.ListAuditEventsRequest:
    """A ListAuditEvents request; times without a zone are taken as UTC."""
    request = audit_pb.ListAuditEventsRequest(
        secret_name=secret_name,
        principal=principal,
        page_size=page_size,
        page_token=page_token,
        method=method,
        outcome=outcome,
        tool=tool,
    )
    if start_time is not None:
        request.start_time.FromDatetime(start_time)
    if end_time is not None:
        request.end_time.FromDatetime(end_time)
    return request


def template_fields(fields: FieldsLike) -> list[resolver_pb.TemplateField]:
    """Normalizes the accepted shapes of template fields into ``TemplateField`` messages."""
    if isinstance(fields, Mapping):
        return [
            resolver_pb.TemplateField(
                key=str(key), template=str(template), encoding=resolver_pb.ENCODING_RAW
            )
            for key, template in fields.items()
        ]
    return [_template_field(field) for field in fields]


def _template_field(field: FieldLike) -> resolver_pb.TemplateField:
    if isinstance(field, resolver_pb.TemplateField):
        return field
    if isinstance(field, Mapping):
        unknown = set(field) - {"key", "template", "encoding"}
        if unknown:
            raise ValueError(f"unknown template field attribute(s): {', '.join(sorted(unknown))}")
        if "key" not in field or "template" not in field:
            raise ValueError("a template field needs 'key' and 'template'")
        key, template = field["key"], field["template"]
        encoding: EncodingLike = field.get("encoding", resolver_pb.ENCODING_RAW)
    elif isinstance(field, Sequence) and not isinstance(field, str) and len(field) in (2, 3):
        key, template = field[0], field[1]
        encoding = field[2] if len(field) == 3 else resolver_pb.ENCODING_RAW
    else:
        raise TypeError("a template field is a TemplateField, a (key, template[, encoding]) tuple")
    if not isinstance(key, str) or not isinstance(template, str):
        raise TypeError("a template field's key and template must be strings")
    return resolver_pb.TemplateField(key=key, template=template, encoding=parse_encoding(encoding))
