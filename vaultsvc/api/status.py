"""Domain errors to gRPC (and HTTP): the ONE table from :class:`~vaultsvc.errors.Code` to
``grpc.StatusCode`` and the console API's HTTP status, and the ``google.rpc.Status`` with a
single ``ErrorInfo``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Final

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from vaultsvc.errors import ERROR_DOMAIN, Code, VaultError

#: Code -> (gRPC status code, HTTP status of the console's JSON API, per AIP-193).
STATUS_TABLE: Final[Mapping[Code, tuple[grpc.StatusCode, int]]] = {
    Code.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    Code.NOT_FOUND: (grpc.StatusCode.NOT_FOUND, 404),
    Code.ALREADY_EXISTS: (grpc.StatusCode.ALREADY_EXISTS, 409),
    Code.PERMISSION_DENIED: (grpc.StatusCode.PERMISSION_DENIED, 403),
    Code.RESOURCE_EXHAUSTED: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    Code.FAILED_PRECONDITION: (grpc.StatusCode.FAILED_PRECONDITION, 400),
    Code.ABORTED: (grpc.StatusCode.ABORTED, 409),
    Code.INTERNAL: (grpc.StatusCode.INTERNAL, 500),
    Code.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, 503),
    Code.DATA_LOSS: (grpc.StatusCode.DATA_LOSS, 500),
    Code.UNAUTHENTICATED: (grpc.StatusCode.UNAUTHENTICATED, 401),
    Code.DEADLINE_EXCEEDED: (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
}

GRPC_CODES: Final[Mapping[Code, grpc.StatusCode]] = {
    code: grpc_status for code, (grpc_status, _) in STATUS_TABLE.items()
}


def grpc_code(code: Code) -> grpc.StatusCode:
    return STATUS_TABLE[code][0]


def http_status(code: Code) -> int:
    """The HTTP status the JSON API answers ``code`` with (AIP-193)."""
    return STATUS_TABLE[code][1]


def error_info(err: VaultError, request_id: str) -> error_details_pb2.ErrorInfo:
    """The one ErrorInfo of ``err`` (domain, reason, metadata and the request id)."""
    return error_details_pb2.ErrorInfo(
        reason=err.reason.value,
        domain=ERROR_DOMAIN,
        metadata={**err.metadata, "request_id": request_id},
    )


def status_for(err: VaultError, request_id: str) -> grpc.Status:
    """The status a client receives for ``err``: code, message and one ErrorInfo (first),
    plus a RetryInfo when the error says when to retry."""
    info = error_info(err, request_id)
    detail = any_pb2.Any()
    detail.Pack(info)
    details = [detail]
    if err.retry_delay is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromTimedelta(timedelta(seconds=err.retry_delay))
        details.append(any_pb2.Any())
        details[-1].Pack(retry)
    status = status_pb2.Status(
        code=grpc_code(err.code).value[0], message=err.message, details=details
    )
    return rpc_status.to_status(status)
