"""SQL for the vault. ``$n`` parameters only; one transaction per unit of work.

The repository never sees key material: writers pass a ``seal`` callable that turns a
:class:`SecretContext` into a :class:`SealedValue`, so the ciphertext can be bound to the
row's id and version chosen inside the transaction.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets as _random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from vaultsvc.crypto import NONCE_HARD_LIMIT, NONCE_WARN_THRESHOLD, SealedValue, SecretContext
from vaultsvc.domain import AuditRecord, ConfigRecord, SecretMeta
from vaultsvc.errors import Aborted, AlreadyExists, NotFound, Reason
from vaultsvc.storage import create_requests
from vaultsvc.storage.db import Database
from vaultsvc.storage.errors import audit_refusal, log_database_error

Sealer = Callable[[SecretContext], SealedValue]
HostsChange = Callable[[str, tuple[str, ...]], tuple[str, ...]]
"""Given a secret's name and current ``allowed_hosts``, the new ones (or an exception)."""

_log = logging.getLogger("vaultsvc.storage")
_KEY_REGISTRATION_LOCK_ID = 0x7661756C746B  # "vaultk"

_META_COLUMNS = "id, name, description, etag, create_time, update_time, allowed_hosts"
_CONFIG_COLUMNS = "key, value, description, create_time, update_time"


@dataclass(frozen=True)
class SealedRow:
    """What a resolve needs to open one secret."""

    id: uuid.UUID
    name: str
    value_version: int
    sealed: SealedValue
    allowed_hosts: tuple[str, ...] = ()
    """The destination hosts the secret is bound to (empty: unbound), checked before
    the value is opened."""

    @property
    def context(self) -> SecretContext:
        return SecretContext(
            secret_id=str(self.id), name=self.name, value_version=self.value_version
        )


@dataclass(frozen=True)
class KeyUsage:
    key_id: str
    check_value: bytes | None
    wrap_count: int
    data_keys: int


@dataclass(frozen=True)
class RewrapBatch:
    """One rewrap transaction: rows looked at, rows moved, rows left alone (unreadable)."""

    scanned: int
    rewrapped: int
    last_id: uuid.UUID | None
    failed_names: tuple[str, ...]


def _note_wraps(key_id: str, new_count: int | None, added: int) -> None:
    """Warn once, in the transaction that crosses it, when a key nears its nonce budget."""
    if new_count is None:
        return
    limits = ((NONCE_WARN_THRESHOLD, logging.WARNING), (NONCE_HARD_LIMIT, logging.ERROR))
    for limit, level in limits:
        if new_count - added < limit <= new_count:
            _log.log(
                level,
                f"master key {key_id!r} has wrapped {new_count} data keys, past {limit} of the "
                f"AES-GCM random-nonce limit ({NONCE_HARD_LIMIT}): generate a new primary key "
                "and rotate (`python -m vaultsvc keys generate`, then `keys rewrap`)",
                extra={"key_id": key_id, "wrap_count": new_count},
            )


def _new_etag() -> str:
    # Hex: never starts with "-", so it is safe as a command-line option value.
    return _random.token_hex(10)


def _meta(row: Any) -> SecretMeta:
    return SecretMeta(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        etag=row["etag"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        allowed_hosts=tuple(row["allowed_hosts"]),
    )


def _config(row: Any) -> ConfigRecord:
    return ConfigRecord(
        key=row["key"],
        value=row["value"],
        description=row["description"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` as a literal, case-insensitive substring."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def insert_audit(conn: Any, records: Sequence[AuditRecord]) -> None:
    """Insert audit events; any database refusal fails the call closed, saying why."""
    try:
        await _insert_audit(conn, records)
    except asyncpg.PostgresError as exc:
        log_database_error(exc, what="audit events cannot be written; request refused")
        raise audit_refusal(exc) from None


#: One statement for any number of events (a group commit is one INSERT). The names of
#: each event travel as one JSON array, as Postgres has no ragged arrays.
INSERT_AUDIT_SQL = """
    INSERT INTO audit_events (time, principal, method, outcome, secret_names, tool, request_id,
                              peer, client_request_id, missing_count, count)
    SELECT COALESCE(t, clock_timestamp()), p, m, o,
           ARRAY(SELECT jsonb_array_elements_text(n)), tl, r, pe, c, mc, cnt
      FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                  $6::text[], $7::text[], $8::text[], $9::text[], $10::integer[], $11::bigint[])
           AS u(t, p, m, o, n, tl, r, pe, c, mc, cnt)"""


def audit_columns(records: Sequence[AuditRecord]) -> list[list[Any]]:
    """The parameters of :data:`INSERT_AUDIT_SQL`: one array per column."""
    return [
        [r.time for r in records],
        [r.principal for r in records],
        [r.method for r in records],
        [r.outcome for r in records],
        [json.dumps(r.secret_names) for r in records],
        [r.tool for r in records],
        [r.request_id for r in records],
        [r.peer for r in records],
        [r.client_request_id for r in records],
        [r.missing_count for r in records],
        [r.count for r in records],
    ]


async def _insert_audit(conn: Any, records: Sequence[AuditRecord]) -> None:
    await conn.execute(INSERT_AUDIT_SQL, *audit_columns(records))


class Repository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ----------------------------------------------------------------- secrets

    async def create_secret(
        self,
        name: str,
        description: str,
        seal: Sealer,
        audit: AuditRecord,
        request_id: uuid.UUID | None = None,
        allowed_hosts: Sequence[str] = (),
    ) -> SecretMeta:
        """Create a secret; with ``request_id``, a retry gets the first reply back."""
        secret_id = uuid.uuid4()
        sealed = seal(SecretContext(secret_id=str(secret_id), name=name, value_version=1))
        async with self.db.transaction() as conn:
            if request_id is not None:
                earlier = await create_requests.replay(conn, request_id, name)
                if earlier is not None:
                    await insert_audit(conn, [audit])
                    return earlier
            row = await conn.fetchrow(
                f"""INSERT INTO secrets (id, name, description, value_version, kek_id,
                                        wrapped_dek, ciphertext, etag, create_time, update_time,
                                        allowed_hosts)
                   VALUES ($1, $2, $3, 1, $4, $5, $6, $7, now(), now(), $8)
                   ON CONFLICT (name_key) DO NOTHING
                   RETURNING {_META_COLUMNS}""",
                secret_id,
                name,
                description,
                sealed.key_id,
                sealed.wrapped_dek,
                sealed.ciphertext,
                _new_etag(),
                list(allowed_hosts),
            )
            if row is None:
                # A concurrent first try with the same request id may have just committed.
                if request_id is not None:
                    earlier = await create_requests.replay(conn, request_id, name)
                    if earlier is not None:
                        await insert_audit(conn, [audit])
                        return earlier
                raise AlreadyExists(
                    f"a secret named {name!r} already exists (names are compared ignoring case)",
                    reason=Reason.ALREADY_EXISTS,
                )
            await self._after_change(conn, secrets_delta=1, wrapped_key_id=sealed.key_id)
            await insert_audit(conn, [audit])
            meta = _meta(row)
            if request_id is not None:
                await create_requests.remember(conn, request_id, meta)
            return meta

    async def get_secret(self, name: str) -> SecretMeta | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_META_COLUMNS} FROM secrets WHERE name_key = lower($1)", name
            )
        return _meta(row) if row else None

    async def list_secrets(
        self, contains: str, after: str | None, limit: int
    ) -> tuple[list[SecretMeta], int, bool]:
        """One page sorted by name: (rows, total matching, more pages follow)."""
        rows, total, more = await self._page(
            "secrets",
            "name_key",
            _META_COLUMNS,
            contains,
            after,
            limit,
            # Without a filter the total is the maintained counter, not a count(*).
            unfiltered_total="SELECT total_secrets FROM vault_state WHERE id = 1",
        )
        return [_meta(r) for r in rows], total, more

    async def _page(
        self,
        table: str,
        key_column: str,
        columns: str,
        contains: str,
        after: str | None,
        limit: int,
        *,
        unfiltered_total: str | None = None,
    ) -> tuple[list[Any], int, bool]:
        """Keyset pagination over ``key_column`` with an optional substring filter.

        ``table``, ``key_column`` and ``columns`` are fixed identifiers from this module;
        every user-supplied value is a ``$n`` parameter. Page and total come from one
        REPEATABLE READ snapshot.
        """
        filters: list[str] = []
        args: list[Any] = []
        if contains:
            args.append(like_pattern(contains))
            filters.append(f"{key_column} LIKE ${len(args)}")
        count_args = list(args)
        count_where = " AND ".join(filters) or "TRUE"
        if after is not None:
            args.append(after)
            filters.append(f"{key_column} > ${len(args)}")
        args.append(limit + 1)
        where = " AND ".join(filters) or "TRUE"
        async with self.db.transaction(isolation="repeatable_read") as conn:
            rows = await conn.fetch(
                f"SELECT {columns} FROM {table} WHERE {where} "
                f"ORDER BY {key_column} LIMIT ${len(args)}",
                *args,
            )
            if not contains and unfiltered_total is not None:
                total = await conn.fetchval(unfiltered_total)
            else:
                total = await conn.fetchval(
                    f"SELECT count(*) FROM {table} WHERE {count_where}", *count_args
                )
        return list(rows[:limit]), int(total), len(rows) > limit

    async def update_secret(
        self,
        name: str,
        etag: str,
        description: str | None,
        seal: Sealer | None,
        audit: AuditRecord,
        allowed_hosts: HostsChange | None = None,
    ) -> SecretMeta:
        """``allowed_hosts`` None keeps the hosts; otherwise it decides, given the current
        hosts, the new ones (and refuses a widening without a new value)."""
        async with self.db.transaction() as conn:
            current = await conn.fetchrow(
                "SELECT id, name, etag, value_version, allowed_hosts FROM secrets "
                "WHERE name_key = lower($1) FOR UPDATE",
                name,
            )
            if current is None:
                raise NotFound(f"secret not found: {name}", reason=Reason.SECRET_NOT_FOUND)
            if etag and etag != current["etag"]:
                raise Aborted(
                    f"etag mismatch for secret {current['name']}: it was changed since you read it",
                    reason=Reason.ETAG_MISMATCH,
                )
            sets = ["etag = $2", "update_time = now()"]
            args: list[Any] = [current["id"], _new_etag()]
            if description is not None:
                args.append(description)
                sets.append(f"description = ${len(args)}")
            if allowed_hosts is not None:
                hosts = allowed_hosts(current["name"], tuple(current["allowed_hosts"]))
                args.append(list(hosts))
                sets.append(f"allowed_hosts = ${len(args)}")
            wrapped_key_id = None
            if seal is not None:
                version = current["value_version"] + 1
                sealed = seal(SecretContext(str(current["id"]), current["name"], version))
                wrapped_key_id = sealed.key_id
                args.extend([version, sealed.key_id, sealed.wrapped_dek, sealed.ciphertext])
                n = len(args)
                sets.append(
                    f"value_version = ${n - 3}, kek_id = ${n - 2}, "
                    f"wrapped_dek = ${n - 1}, ciphertext = ${n}"
                )
            row = await conn.fetchrow(
                f"UPDATE secrets SET {', '.join(sets)} WHERE id = $1 RETURNING {_META_COLUMNS}",
                *args,
            )
            await self._after_change(conn, secrets_delta=0, wrapped_key_id=wrapped_key_id)
            await insert_audit(conn, [audit])
            return _meta(row)

    async def delete_secret(self, name: str, etag: str, audit: AuditRecord) -> str:
        async with self.db.transaction() as conn:
            current = await conn.fetchrow(
                "SELECT id, name, etag FROM secrets WHERE name_key = lower($1) FOR UPDATE", name
            )
            if current is None:
                raise NotFound(f"secret not found: {name}", reason=Reason.SECRET_NOT_FOUND)
            if etag and etag != current["etag"]:
                raise Aborted(
                    f"etag mismatch for secret {current['name']}: it was changed since you read it",
                    reason=Reason.ETAG_MISMATCH,
                )
            await conn.execute("DELETE FROM secrets WHERE id = $1", current["id"])
            await self._after_change(conn, secrets_delta=-1, wrapped_key_id=None)
            await insert_audit(conn, [audit])
            return str(current["name"])

    async def stats(self) -> tuple[int, datetime | None]:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT total_secrets, last_update_time FROM vault_state WHERE id = 1"
            )
        return int(row["total_secrets"]), row["last_update_time"]

    async def _after_change(
        self, conn: Any, *, secrets_delta: int, wrapped_key_id: str | None
    ) -> None:
        await conn.execute(
            "UPDATE vault_state SET total_secrets = total_secrets + $1, "
            "last_update_time = now() WHERE id = 1",
            secrets_delta,
        )
        if wrapped_key_id is not None:
            new_count = await conn.fetchval(
                "UPDATE master_keys SET wrap_count = wrap_count + 1 WHERE key_id = $1 "
                "RETURNING wrap_count",
                wrapped_key_id,
            )
            _note_wraps(wrapped_key_id, new_count, 1)

    # ----------------------------------------------------------------- resolve

    async def fetch_for_resolve(
        self, secret_names: Sequence[str], config_keys: Sequence[str]
    ) -> tuple[dict[str, SealedRow], dict[str, str]]:
        """Every named secret and config value in ONE statement, hence one snapshot.

        Keys of both dicts are lower-cased names.
        """
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                """SELECT 's' AS kind, name_key AS k, id, name, value_version, kek_id,
                          wrapped_dek, ciphertext, NULL::text AS value, allowed_hosts
                     FROM secrets WHERE name_key = ANY($1::text[])
                   UNION ALL
                   SELECT 'c', key_lower, NULL, key, NULL, NULL, NULL, NULL, value, NULL
                     FROM config_values WHERE key_lower = ANY($2::text[])""",
                [n.lower() for n in secret_names],
                [k.lower() for k in config_keys],
            )
        found_secrets: dict[str, SealedRow] = {}
        found_configs: dict[str, str] = {}
        for r in rows:
            if r["kind"] == "s":
                found_secrets[r["k"]] = SealedRow(
                    id=r["id"],
                    name=r["name"],
                    value_version=r["value_version"],
                    sealed=SealedValue(
                        r["kek_id"], bytes(r["wrapped_dek"]), bytes(r["ciphertext"])
                    ),
                    allowed_hosts=tuple(r["allowed_hosts"]),
                )
            else:
                found_configs[r["k"]] = r["value"]
        return found_secrets, found_configs

    async def existing_names(
        self, secret_names: Sequence[str], config_keys: Sequence[str]
    ) -> tuple[set[str], set[str]]:
        """Lower-cased names that exist (for CheckTemplate; reads no ciphertext)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                """SELECT 's' AS kind, name_key AS k FROM secrets WHERE name_key = ANY($1::text[])
                   UNION ALL
                   SELECT 'c', key_lower FROM config_values WHERE key_lower = ANY($2::text[])""",
                [n.lower() for n in secret_names],
                [k.lower() for k in config_keys],
            )
        return (
            {r["k"] for r in rows if r["kind"] == "s"},
            {r["k"] for r in rows if r["kind"] == "c"},
        )

    async def similar_names(
        self, secret_names: Sequence[str], config_keys: Sequence[str], limit: int
    ) -> dict[tuple[str, str], list[str]]:
        """Up to ``limit`` existing names closest to each given (missing) name, in ONE
        statement however many names: trigram similarity on the lower-cased names (the
        indexed ``%`` operator, so ``orderskey`` finds ``orders_key`` and ``orders-key``
        finds ``orders_key``), best first, ties by name. Keys are ``("s"|"c", lower name)``.
        """
        wanted = [("s", n.lower()) for n in secret_names] + [("c", k.lower()) for k in config_keys]
        if not wanted:
            return {}
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                """SELECT w.kind, w.q, m.name
                     FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS w(kind, q, ord)
                     CROSS JOIN LATERAL (
                        SELECT name, similarity(name_key, w.q) AS score, name_key AS k
                          FROM secrets WHERE w.kind = 's' AND name_key % w.q
                        UNION ALL
                        SELECT key, similarity(key_lower, w.q), key_lower
                          FROM config_values WHERE w.kind = 'c' AND key_lower % w.q
                        ORDER BY 2 DESC, 3
                        LIMIT $3
                     ) AS m
                    ORDER BY w.ord, m.score DESC, m.k""",
                [kind for kind, _ in wanted],
                [name for _, name in wanted],
                limit,
            )
        found: dict[tuple[str, str], list[str]] = {}
        for r in rows:
            found.setdefault((r["kind"], r["q"]), []).append(r["name"])
        return found

    # ----------------------------------------------------------------- configs

    async def put_config(
        self, key: str, value: str, description: str, audit: AuditRecord
    ) -> ConfigRecord:
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                """INSERT INTO config_values (key, value, description, create_time, update_time)
                   VALUES ($1, $2, $3, now(), now())
                   ON CONFLICT (key_lower) DO UPDATE
                      SET value = EXCLUDED.value, description = EXCLUDED.description,
                          update_time = now()
                   RETURNING key, value, description, create_time, update_time""",
                key,
                value,
                description,
            )
            await insert_audit(conn, [audit])
            return _config(row)

    async def get_config(self, key: str) -> ConfigRecord | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_CONFIG_COLUMNS} FROM config_values WHERE key_lower = lower($1)",
                key,
            )
        return _config(row) if row else None

    async def list_configs(
        self, contains: str, after: str | None, limit: int
    ) -> tuple[list[ConfigRecord], int, bool]:
        rows, total, more = await self._page(
            "config_values", "key_lower", _CONFIG_COLUMNS, contains, after, limit
        )
        return [_config(r) for r in rows], total, more

    async def delete_config(self, key: str, audit: AuditRecord) -> None:
        async with self.db.transaction() as conn:
            deleted = await conn.fetchval(
                "DELETE FROM config_values WHERE key_lower = lower($1) RETURNING key", key
            )
            if deleted is None:
                raise NotFound(f"config value not found: {key}", reason=Reason.CONFIG_NOT_FOUND)
            await insert_audit(conn, [audit])

    # ------------------------------------------------------------- master keys

    async def key_usage(self) -> list[KeyUsage]:
        """Every key id the database knows: registered check values and data keys wrapped."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                """SELECT COALESCE(m.key_id, s.kek_id) AS key_id, m.check_value,
                          COALESCE(m.wrap_count, 0) AS wrap_count, COALESCE(s.n, 0) AS data_keys
                     FROM master_keys m
                     FULL OUTER JOIN (SELECT kek_id, count(*) AS n FROM secrets GROUP BY kek_id) s
                       ON s.kek_id = m.key_id
                    ORDER BY 1"""
            )
        return [
            KeyUsage(
                key_id=r["key_id"],
                check_value=bytes(r["check_value"]) if r["check_value"] is not None else None,
                wrap_count=int(r["wrap_count"]),
                data_keys=int(r["data_keys"]),
            )
            for r in rows
        ]

    async def register_master_keys(self, check_values: dict[str, bytes]) -> list[str]:
        """Register key ids the database has not seen; returns ids whose stored check value
        differs from the given one, in which case nothing at all is written.

        Serialised by an advisory lock, so replicas starting together cannot register two
        different keys under one id between the start-up check and this insert.
        """
        async with self.db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _KEY_REGISTRATION_LOCK_ID)
            rows = await conn.fetch(
                "SELECT key_id, check_value FROM master_keys WHERE key_id = ANY($1::text[])",
                list(check_values),
            )
            known = {r["key_id"]: bytes(r["check_value"]) for r in rows}
            mismatched = [
                key_id
                for key_id, stored in known.items()
                if not hmac.compare_digest(stored, check_values[key_id])
            ]
            if mismatched:
                return sorted(mismatched)
            new = [(k, v) for k, v in check_values.items() if k not in known]
            if new:
                await conn.executemany(
                    "INSERT INTO master_keys (key_id, check_value) VALUES ($1, $2) "
                    "ON CONFLICT (key_id) DO NOTHING",
                    new,
                )
            return []

    async def rewrap_batch(
        self,
        primary_key_id: str,
        rewrap: Callable[[SealedRow], SealedValue | None],
        batch_size: int,
        after_id: uuid.UUID | None = None,
    ) -> RewrapBatch:
        """Re-wrap up to ``batch_size`` data keys not under the primary, in id order after
        ``after_id`` (a keyset cursor, so rows that cannot be rewrapped are not retried
        forever). ``rewrap`` returns None for a row it cannot open; that row is left as is.

        Rows are locked with SKIP LOCKED so concurrent writers and other rewrap runs are
        never blocked for long (a skipped row is picked up by the next pass); ciphertext
        is never touched.
        """
        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                """SELECT id, name, value_version, kek_id, wrapped_dek, ciphertext
                     FROM secrets WHERE kek_id <> $1 AND ($3::uuid IS NULL OR id > $3)
                    ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED""",
                primary_key_id,
                batch_size,
                after_id,
            )
            updates = []
            failed: list[str] = []
            for r in rows:
                row = SealedRow(
                    id=r["id"],
                    name=r["name"],
                    value_version=r["value_version"],
                    sealed=SealedValue(
                        r["kek_id"], bytes(r["wrapped_dek"]), bytes(r["ciphertext"])
                    ),
                )
                new = rewrap(row)
                if new is None:
                    failed.append(row.name)
                    continue
                if new.key_id != primary_key_id:
                    raise ValueError("rewrap must wrap under the primary key it was asked for")
                updates.append((r["id"], new.key_id, new.wrapped_dek))
            if updates:
                await conn.executemany(
                    "UPDATE secrets SET kek_id = $2, wrapped_dek = $3 WHERE id = $1", updates
                )
                new_count = await conn.fetchval(
                    "UPDATE master_keys SET wrap_count = wrap_count + $2 WHERE key_id = $1 "
                    "RETURNING wrap_count",
                    primary_key_id,
                    len(updates),
                )
                _note_wraps(primary_key_id, new_count, len(updates))
            return RewrapBatch(
                scanned=len(rows),
                rewrapped=len(updates),
                last_id=rows[-1]["id"] if rows else None,
                failed_names=tuple(failed),
            )

    async def count_not_under(self, primary_key_id: str) -> int:
        async with self.db.connection() as conn:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM secrets WHERE kek_id <> $1", primary_key_id
                )
            )

    # ------------------------------------------------------------------- audit

    async def list_audit(
        self,
        secret_name: str,
        principal: str,
        before: tuple[datetime, int] | None,
        limit: int,
    ) -> tuple[list[tuple[int, AuditRecord]], bool]:
        """Newest first by event time (buffered resolve events are written late, so the id
        alone is not time order); ``before`` is the (time, id) of the previous page's last."""
        conditions: list[str] = []
        args: list[Any] = []
        if secret_name:
            args.append([secret_name.lower()])
            conditions.append(f"secret_names && ${len(args)}::text[]")
        if principal:
            args.append(principal)
            conditions.append(f"principal = ${len(args)}")
        if before is not None:
            args.extend(before)
            conditions.append(f"(time, id) < (${len(args) - 1}, ${len(args)})")
        args.append(limit + 1)
        where = " AND ".join(conditions) or "TRUE"
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT id, time, principal, method, outcome, secret_names, tool, request_id, "
                "peer, client_request_id, missing_count, count "
                f"FROM audit_events WHERE {where} ORDER BY time DESC, id DESC LIMIT ${len(args)}",
                *args,
            )
        out = [
            (
                int(r["id"]),
                AuditRecord(
                    principal=r["principal"],
                    method=r["method"],
                    request_id=r["request_id"],
                    peer=r["peer"],
                    outcome=r["outcome"],
                    secret_names=list(r["secret_names"]),
                    tool=r["tool"],
                    time=r["time"],
                    client_request_id=r["client_request_id"],
                    missing_count=int(r["missing_count"]),
                    count=int(r["count"]),
                ),
            )
            for r in rows[:limit]
        ]
        return out, len(rows) > limit
