"""Typed exceptions raised by the vault clients.

Every failed call raises a subclass of :class:`VaultError`, chosen from the gRPC
status code and, where it refines the code, the ``google.rpc.ErrorInfo.reason``
the server puts in the ``grpc-status-details-bin`` trailer.

The message of every exception is the server's status message. The server
never puts a value in a status message, and this module never adds anything
from the request, so an exception (and its ``str``/``repr``) never carries a
secret value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = [
    "ERROR_DOMAIN",
    "AlreadyExists",
    "ConfigInUse",
    "ConfigNotFound",
    "DataLoss",
    "DeadlineExceeded",
    "EtagMismatch",
    "FailedPrecondition",
    "InUse",
    "InternalError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SecretDeleted",
    "SecretInUse",
    "SecretNotFound",
    "Unauthenticated",
    "Unavailable",
    "VaultError",
    "error_from_rpc_error",
    "error_from_status",
]

ERROR_DOMAIN = "vault.interakt"
"""The ``ErrorInfo.domain`` of every error the vault raises."""


class VaultError(Exception):
    """Base of every error raised by the vault clients.

    Attributes:
        code: the gRPC status code.
        reason: ``ErrorInfo.reason`` (UPPER_SNAKE), or the code's name when the
            server sent no ErrorInfo.
        message: the server's status message (never holds a value).
        metadata: ``ErrorInfo.metadata`` (names of secrets, fields... never values).
        domain: ``ErrorInfo.domain``, ``""`` when the server sent none.
    """

    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        domain: str = "",
    ) -> None:
        super().__init__(message)
        self.code: grpc.StatusCode = code if code is not None else self.default_code
        self.reason: str = reason or self.code.name
        self.message: str = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.domain: str = domain

    @property
    def request_id(self) -> str | None:
        """The server's id of the failed request (quote it when reporting a problem)."""
        return self.metadata.get("request_id") or None

    def __str__(self) -> str:
        if self.reason and self.reason != self.code.name:
            return f"{self.code.name} ({self.reason}): {self.message}"
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"message={self.message!r})"
        )


class NotFound(VaultError):
    """NOT_FOUND: the named secret, config value or resource does not exist.

    ``names`` lists what is missing (a resolve reports all missing secrets at
    once): the ErrorInfo metadata key ``names`` (comma-separated). The vault lists at
    most 20 and ends the list with ``and N more``; ``names_omitted`` is that N. For a call
    about one name (get, update, delete) whose error carried none, the clients
    fill in the name they asked for. The message text is never parsed.
    """

    default_code = grpc.StatusCode.NOT_FOUND

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        domain: str = "",
    ) -> None:
        super().__init__(message, code=code, reason=reason, metadata=metadata, domain=domain)
        self.names, self.names_omitted = _missing_names(self.metadata)


class SecretNotFound(NotFound):
    """NOT_FOUND with reason SECRET_NOT_FOUND; ``names`` are the missing secrets."""


class SecretDeleted(SecretNotFound):
    """NOT_FOUND with reason SECRET_DELETED: every missing secret is scheduled for deletion
    and can still be restored (``restore_secret``) until its purge time."""


class ConfigNotFound(NotFound):
    """NOT_FOUND with reason CONFIG_NOT_FOUND; ``names`` are the missing keys."""


class AlreadyExists(VaultError):
    """ALREADY_EXISTS: a secret or config with that name (ignoring case) exists."""

    default_code = grpc.StatusCode.ALREADY_EXISTS


class EtagMismatch(VaultError):
    """ABORTED: the etag sent does not match the current one (someone else changed it)."""

    default_code = grpc.StatusCode.ABORTED


class FailedPrecondition(VaultError):
    """FAILED_PRECONDITION: the call is valid but the resource is not in a state for it."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class InUse(FailedPrecondition):
    """FAILED_PRECONDITION SECRET_IN_USE / CONFIG_IN_USE: a delete refused by the delete
    guard, as a resolve used the item recently. Delete again with ``force=True`` to
    delete it anyway.

    ``tools`` are the tools that used it (most recent first; ``tools_omitted`` counts those
    the vault left out of the list), ``last_resolve_time`` the last use (aware UTC
    datetime; None if the server sent none), both from the ErrorInfo metadata.
    """

    @property
    def tools(self) -> list[str]:
        return _listed(self.metadata.get("tools", ""))[0]

    @property
    def tools_omitted(self) -> int:
        return _listed(self.metadata.get("tools", ""))[1]

    @property
    def last_resolve_time(self) -> datetime | None:
        return _rfc3339(self.metadata.get("last_resolve_time", ""))


class SecretInUse(InUse):
    """FAILED_PRECONDITION SECRET_IN_USE: see :class:`InUse`."""


class ConfigInUse(InUse):
    """FAILED_PRECONDITION CONFIG_IN_USE: see :class:`InUse`."""


class InvalidArgument(VaultError):
    """INVALID_ARGUMENT: bad name, malformed placeholder, missing input..."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class PermissionDenied(VaultError):
    """PERMISSION_DENIED: the token is valid but its role may not call this RPC."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(VaultError):
    """UNAUTHENTICATED: no token, or a token the server does not know."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(VaultError):
    """UNAVAILABLE: the server cannot be reached or is shutting down (retryable)."""

    default_code = grpc.StatusCode.UNAVAILABLE


class DataLoss(VaultError):
    """DATA_LOSS (reason SECRET_UNREADABLE): a stored value cannot be decrypted."""

    default_code = grpc.StatusCode.DATA_LOSS


class ResourceExhausted(VaultError):
    """RESOURCE_EXHAUSTED: a request over one of the server's limits."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(VaultError):
    """DEADLINE_EXCEEDED: the call did not finish within its deadline."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class InternalError(VaultError):
    """INTERNAL or UNKNOWN: a server fault (the message holds at most a request id)."""

    default_code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[VaultError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.ABORTED: EtagMismatch,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
}

_BY_REASON: dict[tuple[grpc.StatusCode, str], type[VaultError]] = {
    (grpc.StatusCode.NOT_FOUND, "SECRET_NOT_FOUND"): SecretNotFound,
    (grpc.StatusCode.NOT_FOUND, "SECRET_DELETED"): SecretDeleted,
    (grpc.StatusCode.NOT_FOUND, "CONFIG_NOT_FOUND"): ConfigNotFound,
    (grpc.StatusCode.FAILED_PRECONDITION, "SECRET_IN_USE"): SecretInUse,
    (grpc.StatusCode.FAILED_PRECONDITION, "CONFIG_IN_USE"): ConfigInUse,
}


def error_from_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str | None = None,
    metadata: Mapping[str, str] | None = None,
    domain: str = "",
) -> VaultError:
    """Builds the exception for a status code and an optional ErrorInfo."""
    cls = _BY_REASON.get((code, reason or ""), _BY_CODE.get(code, VaultError))
    return cls(message, code=code, reason=reason, metadata=metadata, domain=domain)


def error_from_rpc_error(error: grpc.RpcError) -> VaultError:
    """Maps a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``).

    Reads the ``google.rpc.Status`` from the ``grpc-status-details-bin``
    trailer; a missing, unparsable or inconsistent one falls back to the bare
    status code and details.
    """
    call: grpc.Call = error  # type: ignore[assignment]
    try:
        code = call.code()
        details = call.details() or ""
    except Exception:  # an RpcError that is not a Call: nothing to read
        return VaultError(str(error) or "call failed", code=grpc.StatusCode.UNKNOWN)
    if code is None:
        code = grpc.StatusCode.UNKNOWN

    reason: str | None = None
    metadata: dict[str, str] = {}
    domain = ""
    try:
        status = rpc_status.from_call(call)
    except Exception:
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = str(info.reason) or None
                metadata = {str(k): str(v) for k, v in info.metadata.items()}
                domain = str(info.domain)
                break
    return error_from_status(code, details, reason=reason, metadata=metadata, domain=domain)


_MORE_NAMES = re.compile(r"^and (?P<more>[0-9]+) more$")


def _missing_names(metadata: Mapping[str, str]) -> tuple[list[str], int]:
    """The names listed in ErrorInfo ``names`` and how many the vault left out."""
    return _listed(metadata.get("names", ""))


def _rfc3339(text: str) -> datetime | None:
    """An RFC 3339 time from ErrorInfo metadata (``...Z``), or None if absent or malformed."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None


def _listed(text: str) -> tuple[list[str], int]:
    """A comma list from ErrorInfo metadata and how many the vault left out."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    omitted = 0
    if names and (tail := _MORE_NAMES.match(names[-1])) is not None:
        names.pop()
        omitted = int(tail["more"])
    return names, omitted
