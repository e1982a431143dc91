"""Database failures map to the domain errors clients see (one table: storage/errors.py)."""

from __future__ import annotations

import asyncpg
import pytest

from vaultsvc.errors import Code, Reason
from vaultsvc.storage.errors import storage_error


@pytest.mark.parametrize(
    ("exc", "code", "reason"),
    [
        (asyncpg.DiskFullError("full"), Code.RESOURCE_EXHAUSTED, Reason.STORAGE_FULL),
        (
            asyncpg.ReadOnlySQLTransactionError("ro"),
            Code.UNAVAILABLE,
            Reason.DATABASE_READ_ONLY,
        ),
        (asyncpg.QueryCanceledError("slow"), Code.DEADLINE_EXCEEDED, Reason.DATABASE_TIMEOUT),
        (asyncpg.DeadlockDetectedError("dl"), Code.UNAVAILABLE, Reason.DATABASE_UNAVAILABLE),
        (
            asyncpg.SerializationError("ser"),
            Code.UNAVAILABLE,
            Reason.DATABASE_UNAVAILABLE,
        ),
        (TimeoutError(), Code.UNAVAILABLE, Reason.DATABASE_UNAVAILABLE),
        (ConnectionResetError(), Code.UNAVAILABLE, Reason.DATABASE_UNAVAILABLE),
    ],
)
def test_database_failures_map_to_what_clients_can_act_on(
    exc: BaseException, code: Code, reason: Reason
) -> None:
    error = storage_error(exc)
    assert error is not None
    assert (error.code, error.reason) == (code, reason)


def test_other_database_errors_are_not_named() -> None:
    assert storage_error(asyncpg.UniqueViolationError("dup")) is None
    assert storage_error(ValueError("not a database error")) is None
