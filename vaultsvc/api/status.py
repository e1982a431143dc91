"""Domain errors to gRPC: the ONE table from :class:`~vaultsvc.errors.Code` to
``grpc.StatusCode``, and the ``google.rpc.Status`` with a single ``ErrorInfo``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from vaultsvc.errors import ERROR_DOMAIN, Code, VaultError

GRPC_CODES: Final[Mapping[Code, grpc.StatusCode]] = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Code.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.ABORTED: grpc.StatusCode.ABORTED,
    Code.INTERNAL: grpc.StatusCode.INTERNAL,
    Code.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Code.DATA_LOSS: grpc.StatusCode.DATA_LOSS,
    Code.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Code.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(code: Code) -> grpc.StatusCode:
    return GRPC_CODES[code]


def status_for(err: VaultError, request_id: str) -> grpc.Status:
    """The status a client receives for ``err``: code, message, one ErrorInfo, and a
    RetryInfo when the error says when to retry."""
    info = error_details_pb2.ErrorInfo(
        reason=err.reason.value,
        domain=ERROR_DOMAIN,
        metadata={**err.metadata, "request_id": request_id},
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    details = [detail]
    if err.retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(max(int(err.retry_after * 1000), 1))
        retry_detail = any_pb2.Any()
        retry_detail.Pack(retry)
        details.append(retry_detail)
    status = status_pb2.Status(
        code=grpc_code(err.code).value[0], message=err.message, details=details
    )
    return rpc_status.to_status(status)
