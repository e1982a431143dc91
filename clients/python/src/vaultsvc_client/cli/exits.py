"""Exit codes (stable, documented in README and ``vaultctl --help``) and vaultctl's own errors."""

from __future__ import annotations

from ..errors import (
    AlreadyExists,
    DeadlineExceeded,
    EtagMismatch,
    InUse,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    VaultError,
)

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
EXIT_IN_USE = 10
EXIT_INTERRUPTED = 130

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
    EXIT_IN_USE: "in use: delete refused, resolved recently (--force deletes anyway)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGINT)",
}

_BY_ERROR: list[tuple[type[VaultError] | tuple[type[VaultError], ...], int]] = [
    (NotFound, EXIT_NOT_FOUND),
    (AlreadyExists, EXIT_ALREADY_EXISTS),
    ((PermissionDenied, Unauthenticated), EXIT_DENIED),
    (EtagMismatch, EXIT_ETAG_MISMATCH),
    ((InvalidArgument, ResourceExhausted), EXIT_INVALID_ARGUMENT),
    ((Unavailable, DeadlineExceeded), EXIT_UNAVAILABLE),
    (InUse, EXIT_IN_USE),
]


def exit_code_for(error: VaultError) -> int:
    """The documented exit code of a failed call."""
    for kinds, code in _BY_ERROR:
        if isinstance(error, kinds):
            return code
    return EXIT_ERROR


class CliError(Exception):
    """A failure detected by vaultctl itself; ``label`` heads the one-line message."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE, label: str = "usage") -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.label = label
