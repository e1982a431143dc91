"""Domain records and the input rules of the contract (names, values, descriptions).

A pure module (no I/O, no grpc) rather than part of :mod:`vaultsvc.vault`: the records are
shared by the layers *below* the vault (storage returns them, the audit trail fills
them), and storage must not import the behaviour layer that uses it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from vaultsvc.errors import InvalidArgument, Reason
from vaultsvc.limits import (
    DEFAULT_PAGE_SIZE,
    MAX_ALLOWED_HOSTS,
    MAX_CONFIG_VALUE_BYTES,
    MAX_DESCRIPTION_CHARS,
    MAX_FILTER_CHARS,
    MAX_LABEL_CHARS,
    MAX_PAGE_SIZE,
    MAX_VALUE_BYTES,
)
from vaultsvc.names import NAME_PATTERN, NAME_RULE, TOOL_PATTERN, TOOL_REGEX
from vaultsvc.templates.hosts import HostError, normalise_host, normalise_patterns


def safe_label(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    """A user-supplied name made safe to quote in a message or log line.

    Only used for names that failed validation (valid names are already safe): control
    characters (CR, LF, ...) become ``?`` and the text is cut to ``limit`` characters.
    """
    if len(text) <= limit and text.isprintable():
        return text  # the usual case (and on every call's hot path): nothing to clean
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def validate_name(name: str, *, what: str = "name") -> str:
    if not NAME_PATTERN.fullmatch(name):
        if not name:
            raise InvalidArgument(f"{what} is required", reason=Reason.INVALID_NAME)
        raise InvalidArgument(
            f"{what} {safe_label(name)!r} is invalid: it must match {NAME_RULE}",
            reason=Reason.INVALID_NAME,
        )
    return name


def validate_value(value: str, *, required: bool) -> bytes | None:
    """UTF-8 bytes of a secret value, or None when an optional value was left empty."""
    if value == "":
        if required:
            raise InvalidArgument(
                "value is required (1 byte to 64 KiB)", reason=Reason.INVALID_VALUE
            )
        return None
    encoded = value.encode("utf-8")
    if len(encoded) > MAX_VALUE_BYTES:
        raise InvalidArgument(
            f"value is {len(encoded)} bytes; the limit is {MAX_VALUE_BYTES} bytes",
            reason=Reason.VALUE_TOO_LARGE,
        )
    return encoded


def validate_config_value(value: str) -> str:
    if len(value.encode("utf-8")) > MAX_CONFIG_VALUE_BYTES:
        raise InvalidArgument("config value is larger than 64 KiB", reason=Reason.VALUE_TOO_LARGE)
    if "\x00" in value:
        raise InvalidArgument("config value must not contain NUL", reason=Reason.INVALID_VALUE)
    return value


def validate_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidArgument(
            f"description is {len(description)} characters; the limit is {MAX_DESCRIPTION_CHARS}",
            reason=Reason.DESCRIPTION_TOO_LONG,
        )
    if "\x00" in description:
        raise InvalidArgument("description must not contain NUL", reason=Reason.INVALID_DESCRIPTION)
    return description


def validate_allowed_hosts(hosts: Sequence[str]) -> tuple[str, ...]:
    """``allowed_hosts`` entries in their stored form (normalised, unique, sorted)."""
    if len(hosts) > MAX_ALLOWED_HOSTS:
        raise InvalidArgument(
            f"allowed_hosts has {len(hosts)} entries; the limit is {MAX_ALLOWED_HOSTS}",
            reason=Reason.INVALID_ARGUMENT,
            metadata={"field": "allowed_hosts"},
        )
    try:
        return normalise_patterns(hosts)
    except HostError as exc:
        raise InvalidArgument(
            f"{exc} (an exact host such as api.stripe.com or a pattern such as *.stripe.com)",
            reason=Reason.INVALID_ARGUMENT,
            metadata={"field": "allowed_hosts"},
        ) from None


def validate_destination_host(host: str) -> str | None:
    """``ResolveTemplateRequest.destination_host`` normalised (None when unset)."""
    if not host:
        return None
    try:
        if "*" in host:
            raise HostError("a destination host may not hold '*'")
        return normalise_host(host, allow_port=True)
    except HostError as exc:
        raise InvalidArgument(
            f"destination_host {safe_label(host)!r} is invalid: {exc}",
            reason=Reason.INVALID_ARGUMENT,
            metadata={"field": "destination_host"},
        ) from None


def validate_tool(tool: str) -> str:
    """``ResolveTemplateRequest.tool``: empty, or a tool id of :data:`TOOL_REGEX`."""
    if tool and not TOOL_PATTERN.fullmatch(tool):
        raise InvalidArgument(
            f"tool {safe_label(tool)!r} is invalid: it must match ^{TOOL_REGEX}$",
            reason=Reason.INVALID_TOOL,
        )
    return tool


def validate_page_size(page_size: int) -> int:
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative", reason=Reason.INVALID_PAGE_SIZE)
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


def validate_filter(text: str, what: str) -> str:
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidArgument(
            f"{what} is longer than {MAX_FILTER_CHARS} characters", reason=Reason.INVALID_FILTER
        )
    if "\x00" in text:
        raise InvalidArgument(f"{what} must not contain NUL", reason=Reason.INVALID_FILTER)
    return text


#: ListSecrets ``order_by`` values ("" is "name").
SECRET_ORDER_BY: tuple[str, ...] = ("name", "last_resolve_time", "update_time", "create_time")


def validate_order_by(text: str) -> str:
    """ListSecrets ``order_by``: "" or one of :data:`SECRET_ORDER_BY`."""
    if not text:
        return "name"
    if text not in SECRET_ORDER_BY:
        raise InvalidArgument(
            f"order_by {safe_label(text, 64)!r} is not one of {', '.join(SECRET_ORDER_BY)}",
            reason=Reason.INVALID_FILTER,
            metadata={"field": "order_by"},
        )
    return text


@dataclass(frozen=True)
class AuditFilter:
    """What ListAuditEvents keeps (every set field must match; validated by the vault)."""

    secret_name: str = ""
    principal: str = ""
    start_time: datetime | None = None
    """Inclusive."""
    end_time: datetime | None = None
    """Exclusive."""
    method: str = ""
    """A full ``/pkg.Service/Method`` or a bare ``Method``."""
    outcome: str = ""
    tool: str = ""


@dataclass(frozen=True)
class SecretMeta:
    id: uuid.UUID
    name: str
    description: str
    etag: str
    create_time: datetime
    update_time: datetime
    allowed_hosts: tuple[str, ...] = ()
    current_version: int = 1
    delete_time: datetime | None = None
    """Set only while the secret is scheduled for deletion (restorable until ``purge_time``)."""
    purge_time: datetime | None = None
    usage: UsageRecord | None = None
    """Filled by reads that load it (GetSecret, ListSecrets); None elsewhere."""


@dataclass(frozen=True)
class ToolUse:
    """One tool's use of a secret or config value by resolves."""

    tool: str
    last_resolve_time: datetime
    resolve_count: int


@dataclass(frozen=True)
class UsageRecord:
    """Resolves that used a secret or config value: when last, how often, by which tools
    (the :data:`~vaultsvc.limits.MAX_USAGE_TOOLS` most recent, newest first)."""

    last_resolve_time: datetime | None = None
    resolve_count: int = 0
    tools: tuple[ToolUse, ...] = ()


@dataclass(frozen=True)
class VersionRecord:
    """One version of a secret's value: metadata only, never the value."""

    version: int
    create_time: datetime
    created_by: str
    destroyed: bool
    current: bool


@dataclass(frozen=True)
class ValueMatch:
    """A version whose value equals an IdentifySecretValue candidate."""

    name: str
    version: int
    current: bool


@dataclass(frozen=True)
class ConfigRecord:
    key: str
    value: str
    description: str
    create_time: datetime
    update_time: datetime
    usage: UsageRecord | None = None
    """Filled by reads that load it (GetConfigValue, ListConfigValues); None elsewhere."""


@dataclass
class AuditRecord:
    """One audit event. Holds names, never a value."""

    principal: str
    method: str
    request_id: str
    peer: str
    outcome: str = "OK"
    secret_names: list[str] = field(default_factory=list)
    tool: str = ""
    time: datetime | None = None
    client_request_id: str = ""
    """The ``x-request-id`` the client sent (never the event's ``request_id``)."""
    missing_count: int = 0
    """Secret names asked for that do not exist (``secret_names`` keeps 20 of them)."""
    count: int = 1
    """Calls this event stands for (> 1 only for aggregated unauthenticated refusals)."""
    match_count: int | None = None
    """IdentifySecretValue only: how many versions matched (the candidate is never kept)."""
    forced: bool = False
    """A delete whose ``force`` overrode the delete guard (the item was in use)."""
    used_secrets: tuple[uuid.UUID, ...] = ()
    """A successful resolve: the ids of the secrets it opened (usage tracking)."""
    used_configs: tuple[tuple[str, datetime], ...] = ()
    """A successful resolve: the config values it used, each as its lower-cased key and
    the value's generation (its ``create_time``, see ``ConfigRow``)."""
