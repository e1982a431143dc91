"""The one place where database failures become domain errors.

Postgres error texts can quote row data (a key, a name, part of a value), so no message of
the server ever reaches a client or a log: what is logged is the SQLSTATE, its class name
and the exception type.

==========================================  ====================  ======================
What happened                                Code                  Reason
==========================================  ====================  ======================
disk full (SQLSTATE 53100)                   RESOURCE_EXHAUSTED    ``STORAGE_FULL``
read-only (25006: standby, read-only DB)     UNAVAILABLE           ``DATABASE_READ_ONLY``
``statement_timeout`` (57014)                DEADLINE_EXCEEDED     ``DATABASE_TIMEOUT``
unreachable, shut down, no answer in time    UNAVAILABLE           ``DATABASE_UNAVAILABLE``
anything else                                (not mapped: INTERNAL with a request id)
==========================================  ====================  ======================
"""

from __future__ import annotations

import logging

import asyncpg

from vaultsvc.errors import (
    DeadlineExceeded,
    Reason,
    ResourceExhausted,
    Unavailable,
    VaultError,
)
from vaultsvc.telemetry import metrics

_log = logging.getLogger("vaultsvc.storage")

DISK_FULL = "53100"
READ_ONLY = "25006"
QUERY_CANCELED = "57014"
DEADLOCK = "40P01"
SERIALIZATION_FAILURE = "40001"

#: SQLSTATE classes (the first two characters), as PostgreSQL's Appendix A names them.
SQLSTATE_CLASSES: dict[str, str] = {
    "00": "successful_completion",
    "01": "warning",
    "02": "no_data",
    "03": "sql_statement_not_yet_complete",
    "08": "connection_exception",
    "09": "triggered_action_exception",
    "0A": "feature_not_supported",
    "0B": "invalid_transaction_initiation",
    "0F": "locator_exception",
    "0L": "invalid_grantor",
    "0P": "invalid_role_specification",
    "0Z": "diagnostics_exception",
    "20": "case_not_found",
    "21": "cardinality_violation",
    "22": "data_exception",
    "23": "integrity_constraint_violation",
    "24": "invalid_cursor_state",
    "25": "invalid_transaction_state",
    "26": "invalid_sql_statement_name",
    "27": "triggered_data_change_violation",
    "28": "invalid_authorization_specification",
    "2B": "dependent_privilege_descriptors_still_exist",
    "2D": "invalid_transaction_termination",
    "2F": "sql_routine_exception",
    "34": "invalid_cursor_name",
    "38": "external_routine_exception",
    "39": "external_routine_invocation_exception",
    "3B": "savepoint_exception",
    "3D": "invalid_catalog_name",
    "3F": "invalid_schema_name",
    "40": "transaction_rollback",
    "42": "syntax_error_or_access_rule_violation",
    "44": "with_check_option_violation",
    "53": "insufficient_resources",
    "54": "program_limit_exceeded",
    "55": "object_not_in_prerequisite_state",
    "57": "operator_intervention",
    "58": "system_error",
    "72": "snapshot_failure",
    "F0": "config_file_error",
    "HV": "fdw_error",
    "P0": "plpgsql_error",
    "XX": "internal_error",
}

#: Exceptions that mean "the database cannot be reached right now" rather than a bug.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


def sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of a Postgres error, or ``""``."""
    code = getattr(exc, "sqlstate", None)
    return code if isinstance(code, str) else ""


def sqlstate_class(code: str) -> str:
    """``"53100"`` → ``"insufficient_resources"``; unknown classes get ``"class_XX"``."""
    if not code:
        return ""
    return SQLSTATE_CLASSES.get(code[:2], f"class_{code[:2]}")


def error_kind(exc: BaseException) -> str:
    """A bounded name for a database failure (metrics): its SQLSTATE class name,
    ``timeout``, ``connection`` or ``other``."""
    code = sqlstate(exc)
    if code:
        return sqlstate_class(code)
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "connection" if is_connection_failure(exc) else "other"


def is_connection_failure(exc: BaseException) -> bool:
    """The database did not answer or cannot be reached (what the circuit breaker counts)."""
    return isinstance(exc, CONNECTION_ERRORS)  # TimeoutError is an OSError


def log_database_error(exc: BaseException, *, what: str = "database error") -> None:
    """Log the error's type, SQLSTATE and class: never its message, which may hold data."""
    code = sqlstate(exc)
    _log.error(
        what,
        extra={
            "error": type(exc).__name__,
            "sqlstate": code,
            "sqlstate_class": sqlstate_class(code),
        },
    )


def storage_error(exc: BaseException) -> VaultError | None:
    """The domain error for a database failure, or None when it is not one we name."""
    if isinstance(exc, VaultError):
        return exc
    metrics.db_error(error_kind(exc))
    code = sqlstate(exc)
    if code == DISK_FULL:
        return ResourceExhausted(
            "the database is out of disk space; nothing was written",
            reason=Reason.STORAGE_FULL,
        )
    if code == READ_ONLY:
        return Unavailable(
            "the database is read-only (a hot standby, or writes switched off); "
            "nothing was written",
            reason=Reason.DATABASE_READ_ONLY,
        )
    if code == QUERY_CANCELED:
        return DeadlineExceeded("database statement timed out", reason=Reason.DATABASE_TIMEOUT)
    if code in (DEADLOCK, SERIALIZATION_FAILURE):
        # The transaction was rolled back whole (e.g. against an operator's ALTER TABLE):
        # nothing was written, and the same call succeeds when retried.
        return Unavailable(
            "the database rolled the transaction back (a conflict); nothing was written; retry",
            reason=Reason.DATABASE_UNAVAILABLE,
        )
    if isinstance(exc, TimeoutError):
        return Unavailable("database did not answer in time", reason=Reason.DATABASE_UNAVAILABLE)
    if isinstance(exc, CONNECTION_ERRORS):
        return Unavailable("database unavailable", reason=Reason.DATABASE_UNAVAILABLE)
    return None


#: Reasons meaning "the database refused or did not answer": the event of a call that
#: failed this way goes to the write-behind buffer rather than a synchronous write, which
#: would wait on the same database a second time (and fail the same way).
DATABASE_REFUSALS: frozenset[Reason] = frozenset(
    {
        Reason.DATABASE_UNAVAILABLE,
        Reason.DATABASE_TIMEOUT,
        Reason.DATABASE_READ_ONLY,
        Reason.STORAGE_FULL,
    }
)

#: Why the audit trail could not be written, when the cause is a database state a client
#: and an operator can act on; any other cause is ``AUDIT_UNAVAILABLE``.
_AUDIT_CAUSES: dict[Reason, str] = {
    Reason.DATABASE_READ_ONLY: "the database is read-only",
    Reason.STORAGE_FULL: "the database is out of disk space",
    Reason.DATABASE_UNAVAILABLE: "the database is unavailable",
}


def audit_refusal(cause: BaseException | None) -> VaultError:
    """The error for a call refused because its audit event cannot be written.

    The audit promise wins over availability: the call fails closed, and the error says
    why when the database told us (read-only, full, unreachable).
    """
    mapped = storage_error(cause) if cause is not None else None
    if mapped is not None and mapped.reason in _AUDIT_CAUSES:
        return type(mapped)(
            f"the audit trail cannot be written ({_AUDIT_CAUSES[mapped.reason]}); request refused",
            reason=mapped.reason,
        )
    return Unavailable(
        "the audit trail cannot be written; request refused", reason=Reason.AUDIT_UNAVAILABLE
    )
