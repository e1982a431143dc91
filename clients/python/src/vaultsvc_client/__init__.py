"""Typed Python client for vaultsvc, the Interakt secrets vault.

``VaultClient`` (blocking) and ``AsyncVaultClient`` (``grpc.aio``) wrap every
RPC; failures raise :class:`VaultError` subclasses; :class:`Redactor` masks
resolved values (and their common encodings) in logs and tool output.
"""

from ._common import (
    DEFAULT_ADDRESS,
    DEFAULT_TIMEOUT,
    RetryPolicy,
    RpcPolicy,
    TLSConfig,
    parse_encoding,
)
from .aio import AsyncPager, AsyncVaultClient
from .client import Pager, VaultClient
from .errors import (
    AlreadyExists,
    ConfigInUse,
    ConfigNotFound,
    DataLoss,
    DeadlineExceeded,
    EtagMismatch,
    FailedPrecondition,
    InternalError,
    InUse,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SecretDeleted,
    SecretInUse,
    SecretNotFound,
    Unauthenticated,
    Unavailable,
    VaultError,
)
from .redact import Redactor

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_TIMEOUT",
    "AlreadyExists",
    "AsyncPager",
    "AsyncVaultClient",
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
    "Pager",
    "PermissionDenied",
    "Redactor",
    "ResourceExhausted",
    "RetryPolicy",
    "RpcPolicy",
    "SecretDeleted",
    "SecretInUse",
    "SecretNotFound",
    "TLSConfig",
    "Unauthenticated",
    "Unavailable",
    "VaultClient",
    "VaultError",
    "parse_encoding",
]
