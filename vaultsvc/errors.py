"""Domain errors, free of any transport: each carries a :class:`Code` and a :class:`Reason`.

Messages may name secrets, config keys, inputs and fields, never a value. The boundary
(:mod:`vaultsvc.api.status`) maps :class:`Code` to a gRPC status code in one table and
builds ``google.rpc.Status`` with a single ``google.rpc.ErrorInfo``; anything else
becomes INTERNAL with only a request id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum

from vaultsvc.limits import MAX_LISTED_CHARS, MAX_LISTED_NAMES

ERROR_DOMAIN = "vault.interakt"


class Code(StrEnum):
    """The kind of failure, named as the canonical status codes (google.rpc.Code)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"


class Reason(StrEnum):
    """Every ``ErrorInfo.reason`` the vault sends (= enum ErrorReason in the protos); name = value.

    The protos carry the same values as ``enum ErrorReason``.
    """

    ALREADY_EXISTS = "ALREADY_EXISTS"
    AUDIT_UNAVAILABLE = "AUDIT_UNAVAILABLE"
    CONFIG_IN_USE = "CONFIG_IN_USE"
    CONFIG_NOT_FOUND = "CONFIG_NOT_FOUND"
    DATABASE_READ_ONLY = "DATABASE_READ_ONLY"
    DATABASE_TIMEOUT = "DATABASE_TIMEOUT"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    DESCRIPTION_TOO_LONG = "DESCRIPTION_TOO_LONG"
    ETAG_MISMATCH = "ETAG_MISMATCH"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    HOSTS_WIDEN_NEEDS_NEW_VALUE = "HOSTS_WIDEN_NEEDS_NEW_VALUE"
    INPUT_MISSING = "INPUT_MISSING"
    INTERNAL = "INTERNAL"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    INVALID_DESCRIPTION = "INVALID_DESCRIPTION"
    INVALID_ENCODING = "INVALID_ENCODING"
    INVALID_FILTER = "INVALID_FILTER"
    INVALID_HEADER_VALUE = "INVALID_HEADER_VALUE"
    INVALID_NAME = "INVALID_NAME"
    INVALID_PAGE_SIZE = "INVALID_PAGE_SIZE"
    INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"  # noqa: S105 - a reason, not a password
    INVALID_TEMPLATE = "INVALID_TEMPLATE"
    INVALID_TOOL = "INVALID_TOOL"
    INVALID_URL_ORIGIN = "INVALID_URL_ORIGIN"
    INVALID_URL_VALUE = "INVALID_URL_VALUE"
    INVALID_VALUE = "INVALID_VALUE"
    MALFORMED_PLACEHOLDER = "MALFORMED_PLACEHOLDER"
    NAME_RESERVED = "NAME_RESERVED"
    NEAR_MISS_PLACEHOLDER = "NEAR_MISS_PLACEHOLDER"
    NOT_FOUND = "NOT_FOUND"
    NO_FIELDS = "NO_FIELDS"
    OVERLOADED = "OVERLOADED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    PLACEHOLDER_NOT_ALLOWED = "PLACEHOLDER_NOT_ALLOWED"
    RATE_LIMITED = "RATE_LIMITED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"
    SECRET_DELETED = "SECRET_DELETED"  # noqa: S105 - a reason, not a password
    SECRET_HOST_NOT_ALLOWED = "SECRET_HOST_NOT_ALLOWED"  # noqa: S105 - a reason, not a password
    SECRET_IN_USE = "SECRET_IN_USE"  # noqa: S105 - a reason, not a password
    SECRET_NOT_ALLOWED = "SECRET_NOT_ALLOWED"  # noqa: S105 - a reason, not a password
    SECRET_NOT_DELETED = "SECRET_NOT_DELETED"  # noqa: S105 - a reason, not a password
    SECRET_NOT_FOUND = "SECRET_NOT_FOUND"  # noqa: S105 - a reason, not a password
    SECRET_UNREADABLE = "SECRET_UNREADABLE"  # noqa: S105 - a reason, not a password
    STORAGE_FULL = "STORAGE_FULL"
    TEMPLATE_TOO_LARGE = "TEMPLATE_TOO_LARGE"
    TOO_MANY_FIELDS = "TOO_MANY_FIELDS"
    TOO_MANY_INPUTS = "TOO_MANY_INPUTS"
    TOO_MANY_PLACEHOLDERS = "TOO_MANY_PLACEHOLDERS"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    UNAVAILABLE = "UNAVAILABLE"
    VALUE_TOO_LARGE = "VALUE_TOO_LARGE"
    VERSION_DESTROYED = "VERSION_DESTROYED"
    VERSION_IS_CURRENT = "VERSION_IS_CURRENT"
    VERSION_NOT_FOUND = "VERSION_NOT_FOUND"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
    OPERATOR_REQUIRED = "OPERATOR_REQUIRED"


def listed(names: Sequence[str], separator: str = ", ") -> str:
    """``names`` for a message or ErrorInfo metadata: the first ones (at most 20, and at
    most :data:`MAX_LISTED_CHARS` characters of them; always at least one), then ``and N
    more``.

    A thousand 128-character names would otherwise overflow gRPC's metadata limits and the
    client would see RESOURCE_EXHAUSTED instead of the error.
    """
    shown: list[str] = []
    used = 0
    for name in names[:MAX_LISTED_NAMES]:
        if shown and used + len(name) > MAX_LISTED_CHARS:
            break
        shown.append(name)
        used += len(name)
    if len(names) > len(shown):
        shown.append(f"and {len(names) - len(shown)} more")
    return separator.join(shown)


class VaultError(Exception):
    """Base of every error a client may see. ``message`` must never hold a value."""

    code: Code = Code.INTERNAL
    default_reason: Reason = Reason.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason: Reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_delay = retry_delay
        """Seconds after which a retry may succeed (sent as google.rpc.RetryInfo)."""

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"


class InvalidArgument(VaultError):
    code = Code.INVALID_ARGUMENT
    default_reason = Reason.INVALID_ARGUMENT


class NotFound(VaultError):
    code = Code.NOT_FOUND
    default_reason = Reason.NOT_FOUND


class AlreadyExists(VaultError):
    code = Code.ALREADY_EXISTS
    default_reason = Reason.ALREADY_EXISTS


class Aborted(VaultError):
    code = Code.ABORTED
    default_reason = Reason.ETAG_MISMATCH


class FailedPrecondition(VaultError):
    code = Code.FAILED_PRECONDITION
    default_reason = Reason.FAILED_PRECONDITION


class ResourceExhausted(VaultError):
    code = Code.RESOURCE_EXHAUSTED
    default_reason = Reason.RESOURCE_EXHAUSTED


class Unauthenticated(VaultError):
    code = Code.UNAUTHENTICATED
    default_reason = Reason.UNAUTHENTICATED


class PermissionDenied(VaultError):
    code = Code.PERMISSION_DENIED
    default_reason = Reason.PERMISSION_DENIED


class Unavailable(VaultError):
    code = Code.UNAVAILABLE
    default_reason = Reason.UNAVAILABLE


class DataLoss(VaultError):
    code = Code.DATA_LOSS
    default_reason = Reason.SECRET_UNREADABLE


class DeadlineExceeded(VaultError):
    code = Code.DEADLINE_EXCEEDED
    default_reason = Reason.DEADLINE_EXCEEDED


class InternalError(VaultError):
    """What a client sees for any unexpected exception: a request id and nothing else."""

    code = Code.INTERNAL
    default_reason = Reason.INTERNAL
