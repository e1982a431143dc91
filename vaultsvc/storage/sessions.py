"""Console sessions in Postgres (so every worker and replica sees the same sign-ins).

Only SHA-256 hashes of the session cookie and of the vault token are stored; the cookie
itself and the token never reach the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vaultsvc.storage.db import Database


@dataclass(frozen=True)
class SessionRow:
    principal: str
    role: str
    token_hash: bytes
    csrf_secret: str
    expire_time: datetime


class SessionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        session_hash: bytes,
        *,
        principal: str,
        role: str,
        token_hash: bytes,
        csrf_secret: str,
        ttl_seconds: float,
    ) -> datetime:
        """Store a new session; returns when it expires. Expired rows are pruned here."""
        async with self._db.transaction() as conn:
            await conn.execute("DELETE FROM console_sessions WHERE expire_time < now()")
            expire: datetime = await conn.fetchval(
                "INSERT INTO console_sessions "
                "(session_hash, principal, role, token_hash, csrf_secret, expire_time) "
                "VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) "
                "RETURNING expire_time",
                session_hash,
                principal,
                role,
                token_hash,
                csrf_secret,
                ttl_seconds,
            )
        return expire

    async def get(self, session_hash: bytes) -> SessionRow | None:
        """The session, if it exists and has not expired."""
        async with self._db.connection() as conn:
            row: Any = await conn.fetchrow(
                "SELECT principal, role, token_hash, csrf_secret, expire_time "
                "FROM console_sessions WHERE session_hash = $1 AND expire_time > now()",
                session_hash,
            )
        if row is None:
            return None
        return SessionRow(
            row["principal"],
            row["role"],
            bytes(row["token_hash"]),
            row["csrf_secret"],
            row["expire_time"],
        )

    async def delete(self, session_hash: bytes) -> None:
        async with self._db.connection() as conn:
            await conn.execute("DELETE FROM console_sessions WHERE session_hash = $1", session_hash)
