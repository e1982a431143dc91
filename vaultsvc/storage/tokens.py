"""The ``access_tokens`` table (migration V9): bearer tokens kept in the database.

Only a token's SHA-256 (``lookup_hash``, the scheme of configured tokens) and a short
fingerprint of a separate hash are stored, never the token. Every change notifies every
process (kind ``t`` on the change channel), which is what keeps their token caches exact.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vaultsvc.domain import AuditRecord
from vaultsvc.errors import NotFound, Reason
from vaultsvc.storage.db import Database
from vaultsvc.storage.repository import insert_audit


@dataclass(frozen=True)
class TokenRecord:
    """A database token's metadata (what ListTokens shows); never the token or its hash."""

    id: str
    principal: str
    role: str
    description: str
    scopes: tuple[str, ...]
    create_time: datetime
    expire_time: datetime | None
    fingerprint: str

    def expired(self, now: datetime) -> bool:
        return self.expire_time is not None and self.expire_time <= now


_COLUMNS = "id, principal, role, description, scopes, create_time, expire_time, fingerprint"
_VALID = "(expire_time IS NULL OR expire_time > now())"


def _record(row: Any) -> TokenRecord:
    return TokenRecord(
        id=str(row["id"]),
        principal=row["principal"],
        role=row["role"],
        description=row["description"],
        scopes=tuple(row["scopes"]),
        create_time=row["create_time"],
        expire_time=row["expire_time"],
        fingerprint=row["fingerprint"],
    )


class TokenTable:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(
        self,
        *,
        lookup_hash: bytes,
        fingerprint: str,
        principal: str,
        role: str,
        description: str,
        scopes: tuple[str, ...],
        expire_time: datetime | None,
        audit: AuditRecord,
        describe: Callable[[TokenRecord], list[str]],
    ) -> TokenRecord:
        """Store a new token and its audit event in one transaction."""
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                f"""INSERT INTO access_tokens (id, lookup_hash, fingerprint, principal, role,
                                              description, scopes, expire_time, created_by)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                   RETURNING {_COLUMNS}""",
                uuid.uuid4(),
                lookup_hash,
                fingerprint,
                principal,
                role,
                description,
                list(scopes),
                expire_time,
                audit.principal,
            )
            record = _record(row)
            audit.secret_names = describe(record)
            await insert_audit(conn, [audit])
            return record

    async def delete(
        self,
        token_id: uuid.UUID,
        *,
        check: Callable[[TokenRecord], None],
        audit: AuditRecord,
        describe: Callable[[TokenRecord], list[str]],
    ) -> TokenRecord:
        """Delete (revoke) a token once ``check`` accepted it, with its audit event."""
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM access_tokens WHERE id = $1 FOR UPDATE", token_id
            )
            if row is None:
                raise NotFound(f"no token with id {token_id}", reason=Reason.NOT_FOUND)
            record = _record(row)
            check(record)
            await conn.execute("DELETE FROM access_tokens WHERE id = $1", token_id)
            audit.secret_names = describe(record)
            await insert_audit(conn, [audit])
            return record

    async def page(
        self, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> tuple[list[TokenRecord], bool]:
        """Oldest first by (create_time, id); expired tokens are listed too."""
        async with self.db.connection() as conn:
            if after is None:
                rows = await conn.fetch(
                    f"SELECT {_COLUMNS} FROM access_tokens ORDER BY create_time, id LIMIT $1",
                    limit + 1,
                )
            else:
                rows = await conn.fetch(
                    f"""SELECT {_COLUMNS} FROM access_tokens WHERE (create_time, id) > ($1, $2)
                       ORDER BY create_time, id LIMIT $3""",
                    after[0],
                    after[1],
                    limit + 1,
                )
        return [_record(r) for r in rows[:limit]], len(rows) > limit

    async def valid(self, limit: int) -> list[tuple[bytes, TokenRecord]]:
        """Up to ``limit`` unexpired tokens with their lookup hashes."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT lookup_hash, {_COLUMNS} FROM access_tokens WHERE {_VALID} LIMIT $1",
                limit,
            )
        return [(bytes(r["lookup_hash"]), _record(r)) for r in rows]

    async def find(self, lookup_hash: bytes) -> TokenRecord | None:
        """The unexpired token whose SHA-256 is ``lookup_hash``."""
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM access_tokens WHERE lookup_hash = $1 AND {_VALID}",
                lookup_hash,
            )
        return None if row is None else _record(row)
