"""CreateSecret request ids: the first reply of a request id, replayed to its retries.

Rows live in ``create_requests`` (migration ``create_requests``) for ``REMEMBER_FOR``; they
hold the secret's metadata as first returned, never its value or a hash of it. The row is
written in the creating transaction, so a retry sees it exactly when the secret exists.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any, Final

from vaultsvc.domain import SecretMeta
from vaultsvc.errors import FailedPrecondition, Reason

REMEMBER_FOR: Final = timedelta(hours=24)
_EXPIRED_PER_WRITE: Final = 100


async def replay(conn: Any, request_id: uuid.UUID, name: str) -> SecretMeta | None:
    """The first reply of ``request_id`` if it created ``name``; refused for another name."""
    row = await conn.fetchrow(
        """SELECT secret_id, name, description, etag, create_time, update_time, allowed_hosts
             FROM create_requests WHERE request_id = $1 AND expire_time > now()""",
        request_id,
    )
    if row is None:
        return None
    if row["name"].lower() != name.lower():
        raise FailedPrecondition(
            f"request_id {request_id} was already used to create secret {row['name']!r}; "
            "use a new request_id for another secret",
            reason=Reason.REQUEST_ID_REUSED,
            metadata={"field": "request_id"},
        )
    return SecretMeta(
        id=row["secret_id"],
        name=row["name"],
        description=row["description"],
        etag=row["etag"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        allowed_hosts=tuple(row["allowed_hosts"]),
    )


async def remember(conn: Any, request_id: uuid.UUID, meta: SecretMeta) -> None:
    """Record ``meta`` as the reply of ``request_id`` (and drop a few expired rows)."""
    await conn.execute(
        """DELETE FROM create_requests WHERE request_id IN (
               SELECT request_id FROM create_requests WHERE expire_time <= now()
               ORDER BY expire_time LIMIT $1)""",
        _EXPIRED_PER_WRITE,
    )
    await conn.execute(
        """INSERT INTO create_requests (request_id, name_key, secret_id, name, description,
                                        etag, create_time, update_time, expire_time,
                                        allowed_hosts)
           VALUES ($1, lower($2), $3, $2, $4, $5, $6, $7, now() + $8, $9)""",
        request_id,
        meta.name,
        meta.id,
        meta.description,
        meta.etag,
        meta.create_time,
        meta.update_time,
        REMEMBER_FOR,
        list(meta.allowed_hosts),
    )
