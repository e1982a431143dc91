"""SQL for the vault. ``$n`` parameters only; one transaction per unit of work.

The repository never sees key material: writers pass a ``seal`` callable that turns a
:class:`SecretContext` into a :class:`SealedValue`, so the ciphertext can be bound to the
row's id and version chosen inside the transaction.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import secrets as _random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from vaultsvc.crypto import NONCE_HARD_LIMIT, NONCE_WARN_THRESHOLD, SealedValue, SecretContext
from vaultsvc.domain import (
    AuditFilter,
    AuditRecord,
    ConfigRecord,
    SecretMeta,
    ValueMatch,
    VersionRecord,
)
from vaultsvc.errors import (
    Aborted,
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
    ResourceExhausted,
)
from vaultsvc.storage import create_requests, usage
from vaultsvc.storage.db import Database
from vaultsvc.storage.errors import audit_refusal, log_database_error
from vaultsvc.telemetry import metrics

Sealer = Callable[[SecretContext], SealedValue]
HostsChange = Callable[[str, tuple[str, ...]], tuple[str, ...]]
"""Given a secret's name and current ``allowed_hosts``, the new ones (or an exception)."""
Fingerprint = tuple[str, bytes]
"""(master key id, HMAC-SHA-256 of the value under the key derived from it)."""
Resealer = Callable[["SealedRow", SecretContext], tuple[SealedValue, Fingerprint] | None]
"""Opens a stored version and seals its value for a new identity; None if it cannot be opened."""

_log = logging.getLogger("vaultsvc.storage")
_KEY_REGISTRATION_LOCK_ID = 0x7661756C746B  # "vaultk"

_META_COLUMNS = (
    "id, name, description, etag, create_time, update_time, allowed_hosts, current_version, "
    "delete_time, purge_time"
)
_CONFIG_COLUMNS = "key, value, description, create_time, update_time"


RESOLVE_ROWS_SQL = """SELECT 's' AS kind, s.name_key AS k, s.id, s.name, s.current_version,
          s.delete_time, v.kek_id, v.wrapped_dek, v.ciphertext, NULL::text AS value,
          s.allowed_hosts, NULL::timestamptz AS create_time
     FROM secrets s
     LEFT JOIN secret_versions v ON v.secret_id = s.id AND v.version = s.current_version
    WHERE s.name_key = ANY((SELECT $1::text[])::text[])
   UNION ALL
   SELECT 'c', key_lower, NULL, key, NULL, NULL, NULL, NULL, NULL, value, NULL, create_time
     FROM config_values WHERE key_lower = ANY((SELECT $2::text[])::text[])"""
"""The rows a resolve reads, in ONE statement (one snapshot).

Each array is behind a scalar subquery (an InitPlan) so that the planner never sees its
values: the plan is the same for every call, its generic plan costs no more than a custom
one, and Postgres keeps the prepared statement's generic plan after the first 5 calls
instead of planning again on every call (``= ANY($1)`` with the values inlined looks
cheaper for a few names than the generic estimate of 10, so it was re-planned each time:
~0.2 ms of database CPU per cache miss, more than executing it). The index scans stay
(``Index Cond: name_key = ANY ((InitPlan 1).col1)``)."""


@dataclass(frozen=True, slots=True)
class ConfigRow:
    """A config value as a resolve reads it. ``create_time`` is its generation: an update
    keeps it, a value deleted and created again under the same key gets a new one, so a use
    counts for the value it read (``usage_pending.config_created``, V14)."""

    value: str
    create_time: datetime


@dataclass(frozen=True)
class SealedRow:
    """What a resolve needs to open one secret (its current version), or one version.

    ``value_version`` is the version the sealed value belongs to (for a resolve: the
    secret's current version). ``delete_time`` is set while the secret is scheduled for
    deletion: such a row is never opened by a resolve (NOT_FOUND ``SECRET_DELETED``).
    """

    id: uuid.UUID
    name: str
    value_version: int
    sealed: SealedValue
    allowed_hosts: tuple[str, ...] = ()
    """The destination hosts the secret is bound to (empty: unbound), checked before
    the value is opened."""
    delete_time: datetime | None = None

    @property
    def deleted(self) -> bool:
        return self.delete_time is not None

    @functools.cached_property
    def context(self) -> SecretContext:
        """Built once per row (a cached row is opened by many resolves): the row's identity
        only, nothing secret."""
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
    last_id: tuple[uuid.UUID, int] | None
    """(secret id, version) of the last row looked at: the keyset cursor."""
    failed_names: tuple[str, ...]


@dataclass(frozen=True)
class Rewrapped:
    """A version moved under the primary: its (possibly unchanged) sealed value and its
    fingerprint recomputed under the primary."""

    sealed: SealedValue
    fingerprint: Fingerprint


def _note_wraps(key_id: str, new_count: int | None, added: int) -> None:
    """Warn once, in the transaction that crosses it, when a key nears its nonce budget."""
    metrics.wraps(key_id, new_count, added)
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
        current_version=row["current_version"],
        delete_time=row["delete_time"],
        purge_time=row["purge_time"],
    )


def _sealed_row(
    r: Any,
    version: int,
    delete_time: datetime | None = None,
    allowed_hosts: tuple[str, ...] = (),
) -> SealedRow:
    # A destroyed or damaged version has NULL columns: it stays representable so that
    # opening it fails with DecryptionFailed instead of a TypeError.
    return SealedRow(
        id=r["id"],
        name=r["name"],
        value_version=version,
        sealed=SealedValue(
            r["kek_id"] or "",
            bytes(r["wrapped_dek"] or b""),
            bytes(r["ciphertext"] or b""),
        ),
        allowed_hosts=allowed_hosts,
        delete_time=delete_time,
    )


def _not_found(name: str) -> NotFound:
    return NotFound(f"secret not found: {name}", reason=Reason.SECRET_NOT_FOUND)


def scheduled_for_deletion(name: str) -> NotFound:
    return NotFound(
        f"secret {name} is scheduled for deletion; restore it with RestoreSecret "
        "(vaultctl secrets restore) before its purge time",
        reason=Reason.SECRET_DELETED,
    )


def _check_etag(current: Any, etag: str) -> None:
    if etag and etag != current["etag"]:
        raise Aborted(
            f"etag mismatch for secret {current['name']}: it was changed since you read it",
            reason=Reason.ETAG_MISMATCH,
        )


_DESTROY_SET = (
    "kek_id = NULL, wrapped_dek = NULL, ciphertext = NULL, fingerprint = NULL, "
    "fingerprint_key_id = NULL, destroy_time = now()"
)


def _config(row: Any) -> ConfigRecord:
    return ConfigRecord(
        key=row["key"],
        value=row["value"],
        description=row["description"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


#: ListSecrets ``order_by`` values: the SQL column (None: by name).
SECRET_ORDERS: dict[str, str | None] = {
    "name": None,
    "last_resolve_time": "u.last_resolve_time",
    "update_time": "s.update_time",
    "create_time": "s.create_time",
}
_ORDER_FIELDS = {
    "last_resolve_time": "used_at",
    "update_time": "update_time",
    "create_time": "create_time",
}


def _decode_position(position: str) -> tuple[datetime | None, str]:
    """(time or None, name key) of a time-ordered page token's position."""
    time_text, sep, key = position.rpartition("|")
    try:
        if not sep or not key:
            raise ValueError(position)
        moment = datetime.fromisoformat(time_text) if time_text else None
        if moment is not None and moment.tzinfo is None:
            raise ValueError(position)
    except ValueError:
        raise InvalidArgument(
            "page_token is not a token this server issued", reason=Reason.INVALID_PAGE_TOKEN
        ) from None
    return moment, key


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
                              peer, client_request_id, missing_count, count, match_count,
                              forced)
    SELECT COALESCE(t, clock_timestamp()), p, m, o,
           ARRAY(SELECT jsonb_array_elements_text(n)), tl, r, pe, c, mc, cnt, mat, f
      FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                  $6::text[], $7::text[], $8::text[], $9::text[], $10::integer[], $11::bigint[],
                  $12::integer[], $13::boolean[])
           AS u(t, p, m, o, n, tl, r, pe, c, mc, cnt, mat, f)"""
#: Parameters of :data:`INSERT_AUDIT_SQL`.
AUDIT_PARAMS = 13


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
        [r.match_count for r in records],
        [r.forced for r in records],
    ]


async def _insert_audit(conn: Any, records: Sequence[AuditRecord]) -> None:
    await conn.execute(INSERT_AUDIT_SQL, *audit_columns(records))


#: The bare method name of ``/pkg.Service/Method``, exactly as the ``audit_events_method``
#: index (migration V10) computes it: a query must spell it the same to use the index.
AUDIT_BARE_METHOD_SQL = "regexp_replace(method, '^.*/', '')"


def audit_query(
    query: AuditFilter, before: tuple[datetime, int] | None, limit: int
) -> tuple[str, list[Any]]:
    """The SELECT of one ListAuditEvents page (``limit`` + 1 rows) and its parameters.

    Each filter has an index that yields rows in (time, id) order: the time range
    ``audit_events_time``, principal, method (by its bare name), outcome and tool their own;
    the secret name the GIN index on ``secret_names``."""
    conditions: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if query.secret_name:
        conditions.append(f"secret_names && {arg([query.secret_name.lower()])}::text[]")
    if query.principal:
        conditions.append(f"principal = {arg(query.principal)}")
    if query.method:
        bare = query.method.rpartition("/")[2]
        conditions.append(f"{AUDIT_BARE_METHOD_SQL} = {arg(bare)}")
        if bare != query.method:
            conditions.append(f"method = {arg(query.method)}")
    if query.outcome:
        conditions.append(f"outcome = {arg(query.outcome)}")
    if query.tool:
        conditions.append(f"tool = {arg(query.tool)}")
    if query.start_time is not None:
        conditions.append(f"time >= {arg(query.start_time)}")
    if query.end_time is not None:
        conditions.append(f"time < {arg(query.end_time)}")
    if before is not None:
        conditions.append(f"(time, id) < ({arg(before[0])}, {arg(before[1])})")
    where = " AND ".join(conditions) or "TRUE"
    sql = (
        "SELECT id, time, principal, method, outcome, secret_names, tool, request_id, "
        "peer, client_request_id, missing_count, count, match_count, forced "
        f"FROM audit_events WHERE {where} ORDER BY time DESC, id DESC LIMIT {arg(limit + 1)}"
    )
    return sql, args


class Repository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ----------------------------------------------------------------- secrets

    async def create_secret(
        self,
        name: str,
        description: str,
        seal: Sealer,
        fingerprint: Fingerprint,
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
                f"""INSERT INTO secrets (id, name, description, current_version, etag,
                                        create_time, update_time, allowed_hosts)
                   VALUES ($1, $2, $3, 1, $4, now(), now(), $5)
                   ON CONFLICT (name_key) DO NOTHING
                   RETURNING {_META_COLUMNS}""",
                secret_id,
                name,
                description,
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
                existing = await conn.fetchrow(
                    "SELECT name, purge_time FROM secrets WHERE name_key = lower($1)", name
                )
                if existing is not None and existing["purge_time"] is not None:
                    raise AlreadyExists(
                        f"the name {name!r} is reserved: secret {existing['name']} is scheduled "
                        f"for deletion until {existing['purge_time'].isoformat()}; restore it, "
                        "or delete it for good with purge",
                        reason=Reason.NAME_RESERVED,
                    )
                raise AlreadyExists(
                    f"a secret named {name!r} already exists (names are compared ignoring case)",
                    reason=Reason.ALREADY_EXISTS,
                )
            await self._insert_version(conn, secret_id, 1, sealed, fingerprint, audit.principal)
            await self._after_change(conn, secrets_delta=1, wrapped_key_id=sealed.key_id)
            await insert_audit(conn, [audit])
            meta = _meta(row)
            if request_id is not None:
                await create_requests.remember(conn, request_id, meta)
            return meta

    @staticmethod
    async def _insert_version(
        conn: Any,
        secret_id: uuid.UUID,
        version: int,
        sealed: SealedValue,
        fingerprint: Fingerprint,
        created_by: str,
    ) -> None:
        await conn.execute(
            """INSERT INTO secret_versions (secret_id, version, create_time, created_by, kek_id,
                                            wrapped_dek, ciphertext, fingerprint_key_id,
                                            fingerprint)
               VALUES ($1, $2, now(), $3, $4, $5, $6, $7, $8)""",
            secret_id,
            version,
            created_by,
            sealed.key_id,
            sealed.wrapped_dek,
            sealed.ciphertext,
            fingerprint[0],
            fingerprint[1],
        )

    @staticmethod
    async def _prune_versions(
        conn: Any, secret_id: uuid.UUID, current: int, max_versions: int
    ) -> None:
        """Destroy every version older than the latest ``max_versions`` (metadata kept)."""
        await conn.execute(
            f"UPDATE secret_versions SET {_DESTROY_SET} "
            "WHERE secret_id = $1 AND version <= $2 AND destroy_time IS NULL",
            secret_id,
            current - max_versions,
        )

    async def _lock_live(self, conn: Any, name: str, etag: str) -> Any:
        """The secret's row, locked; NOT_FOUND when missing or scheduled for deletion."""
        current = await conn.fetchrow(
            "SELECT id, name, etag, current_version, delete_time, allowed_hosts FROM secrets "
            "WHERE name_key = lower($1) FOR UPDATE",
            name,
        )
        if current is None:
            raise _not_found(name)
        if current["delete_time"] is not None:
            raise scheduled_for_deletion(current["name"])
        _check_etag(current, etag)
        return current

    async def get_secret(self, name: str) -> SecretMeta | None:
        await usage.fold_all(self.db)  # usage reads are exact (storage/usage.py)
        async with self.db.transaction(isolation="repeatable_read") as conn:
            row = await conn.fetchrow(
                f"SELECT {_META_COLUMNS} FROM secrets WHERE name_key = lower($1)", name
            )
            if row is None:
                return None
            found = await usage.secret_usage(conn, [row["id"]])
        return replace(_meta(row), usage=found[row["id"]])

    async def list_secrets(
        self,
        contains: str,
        after: str | None,
        limit: int,
        *,
        show_deleted: bool = False,
        order_by: str = "name",
        never_resolved: bool = False,
        unused_since: datetime | None = None,
    ) -> tuple[list[SecretMeta], int, bool, str]:
        """One page: (rows with their usage, total matching, more pages follow, the
        position of the last row for the next page token).

        ``order_by`` is ``name`` (A-Z) or a time column of :data:`SECRET_ORDERS`, newest
        first (never-resolved secrets last), then by name: keyset pagination over that
        pair. Secrets scheduled for deletion are listed only with ``show_deleted``.
        ``never_resolved`` / ``unused_since`` filter on usage (never-resolved secrets count
        as unused since any time).
        """
        column = SECRET_ORDERS[order_by]
        filters: list[str] = [] if show_deleted else ["s.delete_time IS NULL"]
        args: list[Any] = []
        if contains:
            args.append(like_pattern(contains))
            filters.append(f"s.name_key LIKE ${len(args)}")
        if never_resolved:
            filters.append("u.last_resolve_time IS NULL")
        if unused_since is not None:
            args.append(unused_since)
            filters.append(f"(u.last_resolve_time IS NULL OR u.last_resolve_time < ${len(args)})")
        count_args = list(args)
        count_where = " AND ".join(filters) or "TRUE"
        if after is not None:
            if column is None:
                args.append(after)
                filters.append(f"s.name_key > ${len(args)}")
            else:
                moment, key = _decode_position(after)
                args.append(key)
                k = len(args)
                if moment is None:
                    filters.append(f"({column} IS NULL AND s.name_key > ${k})")
                else:
                    args.append(moment)
                    t = len(args)
                    filters.append(
                        f"({column} < ${t} OR ({column} = ${t} AND s.name_key > ${k})"
                        f" OR {column} IS NULL)"
                    )
        order = "s.name_key" if column is None else f"{column} DESC NULLS LAST, s.name_key"
        args.append(limit + 1)
        where = " AND ".join(filters) or "TRUE"
        joined = "secrets s LEFT JOIN secret_usage u ON u.secret_id = s.id"
        plain_total = not (contains or show_deleted or never_resolved or unused_since)
        await usage.fold_all(self.db)  # usage reads are exact (storage/usage.py)
        async with self.db.transaction(isolation="repeatable_read") as conn:
            rows = await conn.fetch(
                f"SELECT {_META_COLUMNS}, u.last_resolve_time AS used_at FROM {joined} "
                f"WHERE {where} ORDER BY {order} LIMIT ${len(args)}",
                *args,
            )
            if plain_total:
                # The maintained counter of live secrets, not a count.
                total = await conn.fetchval("SELECT total_secrets FROM vault_state WHERE id = 1")
            else:
                total = await conn.fetchval(
                    f"SELECT count(*) FROM {joined} WHERE {count_where}", *count_args
                )
            page = list(rows[:limit])
            found = await usage.secret_usage(conn, [r["id"] for r in page])
        position = ""
        if page:
            last = page[-1]
            key = str(last["name"]).lower()
            if column is None:
                position = key
            else:
                moment = last[_ORDER_FIELDS[order_by]]
                position = f"{moment.isoformat() if moment else ''}|{key}"
        metas = [replace(_meta(r), usage=found[r["id"]]) for r in page]
        return metas, int(total), len(rows) > limit, position

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
        condition: str | None = None,
    ) -> tuple[list[Any], int, bool]:
        """Keyset pagination over ``key_column`` with an optional substring filter.

        ``table``, ``key_column``, ``columns`` and ``condition`` are fixed SQL from this
        module; every user-supplied value is a ``$n`` parameter. Page and total come from
        one REPEATABLE READ snapshot.
        """
        filters: list[str] = [condition] if condition else []
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
        fingerprint: Fingerprint | None,
        audit: AuditRecord,
        allowed_hosts: HostsChange | None = None,
        *,
        max_versions: int,
    ) -> SecretMeta:
        """Update the description and/or write a new current version of the value.
        ``allowed_hosts`` None keeps the hosts; otherwise it decides, given the current
        hosts, the new ones (and refuses a widening without a new value)."""
        async with self.db.transaction() as conn:
            current = await self._lock_live(conn, name, etag)
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
                assert fingerprint is not None
                version = current["current_version"] + 1
                sealed = seal(SecretContext(str(current["id"]), current["name"], version))
                wrapped_key_id = sealed.key_id
                await self._insert_version(
                    conn, current["id"], version, sealed, fingerprint, audit.principal
                )
                args.append(version)
                sets.append(f"current_version = ${len(args)}")
                await self._prune_versions(conn, current["id"], version, max_versions)
            row = await conn.fetchrow(
                f"UPDATE secrets SET {', '.join(sets)} WHERE id = $1 RETURNING {_META_COLUMNS}",
                *args,
            )
            await self._after_change(conn, secrets_delta=0, wrapped_key_id=wrapped_key_id)
            await insert_audit(conn, [audit])
            return _meta(row)

    async def rollback_secret(
        self,
        name: str,
        version: int,
        etag: str,
        reseal: Resealer,
        audit: AuditRecord,
        *,
        max_versions: int,
    ) -> SecretMeta:
        """A new current version holding ``version``'s value, sealed afresh for its identity."""
        async with self.db.transaction() as conn:
            current = await self._lock_live(conn, name, etag)
            old = await conn.fetchrow(
                """SELECT s.id, s.name, v.kek_id, v.wrapped_dek, v.ciphertext, v.destroy_time
                     FROM secret_versions v JOIN secrets s ON s.id = v.secret_id
                    WHERE v.secret_id = $1 AND v.version = $2""",
                current["id"],
                version,
            )
            if old is None:
                raise NotFound(
                    f"secret {current['name']} has no version {version}",
                    reason=Reason.VERSION_NOT_FOUND,
                )
            if old["destroy_time"] is not None:
                raise FailedPrecondition(
                    f"version {version} of secret {current['name']} was destroyed; its value "
                    "is gone",
                    reason=Reason.VERSION_DESTROYED,
                )
            new_version = current["current_version"] + 1
            resealed = reseal(
                _sealed_row(old, version),
                SecretContext(str(current["id"]), current["name"], new_version),
            )
            if resealed is None:
                raise DataLoss(
                    f"version {version} of secret {current['name']} cannot be decrypted: its "
                    "stored data failed the integrity check",
                    reason=Reason.SECRET_UNREADABLE,
                    metadata={"names": current["name"]},
                )
            sealed, fingerprint = resealed
            await self._insert_version(
                conn, current["id"], new_version, sealed, fingerprint, audit.principal
            )
            await self._prune_versions(conn, current["id"], new_version, max_versions)
            row = await conn.fetchrow(
                "UPDATE secrets SET etag = $2, update_time = now(), current_version = $3 "
                f"WHERE id = $1 RETURNING {_META_COLUMNS}",
                current["id"],
                _new_etag(),
                new_version,
            )
            await self._after_change(conn, secrets_delta=0, wrapped_key_id=sealed.key_id)
            await insert_audit(conn, [audit])
            return _meta(row)

    async def destroy_version(self, name: str, version: int, audit: AuditRecord) -> None:
        """Remove one old version's ciphertext, wrapped key and fingerprint."""
        async with self.db.transaction() as conn:
            current = await self._lock_live(conn, name, "")
            if version == current["current_version"]:
                raise FailedPrecondition(
                    f"version {version} is the current version of secret {current['name']}; "
                    "write a new value or roll back first",
                    reason=Reason.VERSION_IS_CURRENT,
                )
            found = await conn.fetchval(
                f"UPDATE secret_versions SET {_DESTROY_SET} "
                "WHERE secret_id = $1 AND version = $2 AND destroy_time IS NULL "
                "RETURNING version",
                current["id"],
                version,
            )
            if found is None:
                exists = await conn.fetchval(
                    "SELECT true FROM secret_versions WHERE secret_id = $1 AND version = $2",
                    current["id"],
                    version,
                )
                if not exists:
                    raise NotFound(
                        f"secret {current['name']} has no version {version}",
                        reason=Reason.VERSION_NOT_FOUND,
                    )
            # Destroying an already destroyed version is a no-op that still succeeds.
            await conn.execute(
                "UPDATE secrets SET etag = $2, update_time = now() WHERE id = $1",
                current["id"],
                _new_etag(),
            )
            await self._after_change(conn, secrets_delta=0, wrapped_key_id=None)
            await insert_audit(conn, [audit])

    async def list_versions(
        self, name: str, before: int | None, limit: int
    ) -> tuple[list[VersionRecord], bool]:
        """Versions newest first, from before ``before``; (page, more pages follow)."""
        async with self.db.transaction(isolation="repeatable_read") as conn:
            secret = await conn.fetchrow(
                "SELECT id, current_version FROM secrets WHERE name_key = lower($1)", name
            )
            if secret is None:
                raise _not_found(name)
            rows = await conn.fetch(
                """SELECT version, create_time, created_by, destroy_time IS NOT NULL AS destroyed
                     FROM secret_versions
                    WHERE secret_id = $1 AND ($2::bigint IS NULL OR version < $2)
                    ORDER BY version DESC LIMIT $3""",
                secret["id"],
                before,
                limit + 1,
            )
        out = [
            VersionRecord(
                version=r["version"],
                create_time=r["create_time"],
                created_by=r["created_by"],
                destroyed=r["destroyed"],
                current=r["version"] == secret["current_version"],
            )
            for r in rows[:limit]
        ]
        return out, len(rows) > limit

    async def delete_secret(
        self,
        name: str,
        etag: str,
        audit: AuditRecord,
        *,
        recovery_days: int,
        purge: bool = False,
        guard_days: int = 0,
        force: bool = False,
    ) -> str:
        """Schedule deletion for ``recovery_days`` (0, or ``purge``: delete at once).

        The delete guard: a live secret resolved within ``guard_days`` (0: no guard) is
        FAILED_PRECONDITION ``SECRET_IN_USE`` unless ``force`` (then the event is marked
        forced). Checked in this transaction, with new uses held until it commits, so a use
        committed before the delete is always seen (storage/usage.py: what that costs)."""
        if guard_days > 0:
            # Most pending uses folded (and committed) outside the delete's transaction: the
            # guard's own fold, which audit batches wait for, has little left to do.
            await usage.fold_all(self.db)
        async with self.db.transaction() as conn:
            current = await conn.fetchrow(
                "SELECT id, name, etag, delete_time FROM secrets "
                "WHERE name_key = lower($1) FOR UPDATE",
                name,
            )
            if current is None:
                raise _not_found(name)
            scheduled = current["delete_time"] is not None
            if scheduled and not purge:
                raise scheduled_for_deletion(current["name"])
            _check_etag(current, etag)
            if guard_days > 0 and not scheduled:
                used = await usage.secret_in_use(conn, current["id"], guard_days, exact=not force)
                if used is not None:
                    if not force:
                        raise usage.in_use_error("secret", current["name"], used, guard_days)
                    audit.forced = True
            live_delta = 0 if scheduled else -1
            if purge or recovery_days == 0:
                await conn.execute("DELETE FROM secrets WHERE id = $1", current["id"])
            else:
                await conn.execute(
                    """UPDATE secrets SET delete_time = now(),
                              purge_time = now() + make_interval(days => $2),
                              etag = $3, update_time = now()
                        WHERE id = $1""",
                    current["id"],
                    recovery_days,
                    _new_etag(),
                )
            await self._after_change(conn, secrets_delta=live_delta, wrapped_key_id=None)
            await insert_audit(conn, [audit])
            return str(current["name"])

    async def restore_secret(self, name: str, audit: AuditRecord) -> SecretMeta:
        async with self.db.transaction() as conn:
            current = await conn.fetchrow(
                "SELECT id, name, delete_time FROM secrets WHERE name_key = lower($1) FOR UPDATE",
                name,
            )
            if current is None:
                raise _not_found(name)
            if current["delete_time"] is None:
                raise FailedPrecondition(
                    f"secret {current['name']} is not scheduled for deletion",
                    reason=Reason.SECRET_NOT_DELETED,
                )
            row = await conn.fetchrow(
                "UPDATE secrets SET delete_time = NULL, purge_time = NULL, etag = $2, "
                f"update_time = now() WHERE id = $1 RETURNING {_META_COLUMNS}",
                current["id"],
                _new_etag(),
            )
            await self._after_change(conn, secrets_delta=1, wrapped_key_id=None)
            await insert_audit(conn, [audit])
            return _meta(row)

    async def purge_expired(
        self, now: datetime | None, batch_size: int, audit: AuditRecord
    ) -> list[str]:
        """Delete up to ``batch_size`` secrets whose recovery window has ended; their names.

        ``now`` replaces the database clock (tests move time with it); None uses ``now()``.
        Safe on any number of replicas at once: rows are claimed with SKIP LOCKED, so two
        purgers never wait on or delete the same row, and a secret a usage fold holds (FOR
        KEY SHARE, V13__usage_races.sql) is left to a later round rather than waited for.
        """
        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                """DELETE FROM secrets WHERE id IN (
                       SELECT id FROM secrets
                        WHERE purge_time < COALESCE($1::timestamptz, now())
                        ORDER BY purge_time LIMIT $2 FOR UPDATE SKIP LOCKED)
                   RETURNING name""",
                now,
                batch_size,
            )
            names = sorted(str(r["name"]) for r in rows)
            if names:
                await conn.execute("UPDATE vault_state SET last_update_time = now() WHERE id = 1")
                audit.secret_names = [n.lower() for n in names]
                await insert_audit(conn, [audit])
            return names

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

    # ---------------------------------------------------------------- identify

    async def identify(self, candidates: dict[str, bytes]) -> list[ValueMatch]:
        """Versions whose stored fingerprint equals the candidate's under the same key."""
        if not candidates:
            return []
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                """SELECT s.name, v.version, v.version = s.current_version AS current
                     FROM secret_versions v JOIN secrets s ON s.id = v.secret_id
                     JOIN unnest($1::text[], $2::bytea[]) AS c(key_id, digest)
                       ON v.fingerprint = c.digest AND v.fingerprint_key_id = c.key_id
                    ORDER BY s.name_key, v.version DESC""",
                list(candidates),
                list(candidates.values()),
            )
        return [ValueMatch(r["name"], r["version"], r["current"]) for r in rows]

    async def take_identify_budget(
        self, principal: str, per_principal: int, vault_wide: int, now: datetime | None = None
    ) -> None:
        """Count one IdentifySecretValue call in this minute's per-principal and vault-wide
        buckets; RESOURCE_EXHAUSTED ``RATE_LIMITED`` (nothing counted) when either is spent.

        The counters live in Postgres, so workers, replicas and new principals share them.
        """
        async with self.db.transaction() as conn:
            window = await conn.fetchval(
                "SELECT date_trunc('minute', COALESCE($1::timestamptz, now()))", now
            )
            spent: list[str] = []
            for bucket, limit, label in (
                ("*", vault_wide, "vault-wide"),
                (f"p:{principal}", per_principal, f"principal {principal}"),
            ):
                calls = await conn.fetchval(
                    """INSERT INTO identify_rate (bucket, window_start, calls) VALUES ($1, $2, 1)
                       ON CONFLICT (bucket, window_start)
                          DO UPDATE SET calls = identify_rate.calls + 1
                       RETURNING calls""",
                    bucket,
                    window,
                )
                if calls > limit:
                    spent.append(f"{label} limit of {limit} per minute")
            if spent:
                seconds_left = await conn.fetchval(
                    "SELECT extract(epoch FROM $1::timestamptz + interval '1 minute' "
                    "- COALESCE($2::timestamptz, now()))::float8",
                    window,
                    now,
                )
                raise ResourceExhausted(
                    f"IdentifySecretValue rate limit reached ({'; '.join(spent)}); "
                    "try again after the current minute",
                    reason=Reason.RATE_LIMITED,
                    retry_delay=max(float(seconds_left), 0.001),
                )
            await conn.execute(
                "DELETE FROM identify_rate "
                "WHERE window_start < $1::timestamptz - interval '1 hour'",
                window,
            )

    async def fingerprint_batch(
        self, fingerprint: Callable[[SealedRow], Fingerprint | None], batch_size: int
    ) -> int:
        """Fingerprint up to ``batch_size`` versions that have none (carried over from before
        versions existed); returns how many were done. SKIP LOCKED: safe on every replica."""
        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                """SELECT s.id, s.name, v.version, v.kek_id, v.wrapped_dek, v.ciphertext
                     FROM secret_versions v JOIN secrets s ON s.id = v.secret_id
                    WHERE v.fingerprint IS NULL AND v.destroy_time IS NULL
                    ORDER BY v.secret_id, v.version LIMIT $1 FOR UPDATE OF v SKIP LOCKED""",
                batch_size,
            )
            updates = []
            for r in rows:
                result = fingerprint(_sealed_row(r, r["version"]))
                if result is not None:
                    updates.append((r["id"], r["version"], result[0], result[1]))
            if updates:
                await conn.executemany(
                    "UPDATE secret_versions SET fingerprint_key_id = $3, fingerprint = $4 "
                    "WHERE secret_id = $1 AND version = $2",
                    updates,
                )
            return len(updates)

    # ----------------------------------------------------------------- resolve

    async def fetch_for_resolve(
        self, secret_names: Sequence[str], config_keys: Sequence[str]
    ) -> tuple[dict[str, SealedRow], dict[str, ConfigRow]]:
        """Every named secret (its current version and deletion state) and config value in
        ONE statement, hence one snapshot.

        A secret scheduled for deletion is returned too, with ``delete_time`` set, so the
        caller can tell "scheduled for deletion" from "missing" (it must not open it).
        Keys of both dicts are lower-cased names.
        """
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                RESOLVE_ROWS_SQL,
                [n.lower() for n in secret_names],
                [k.lower() for k in config_keys],
            )
        found_secrets: dict[str, SealedRow] = {}
        found_configs: dict[str, ConfigRow] = {}
        for r in rows:
            if r["kind"] == "s":
                found_secrets[r["k"]] = _sealed_row(
                    r, r["current_version"], r["delete_time"], tuple(r["allowed_hosts"])
                )
            else:
                found_configs[r["k"]] = ConfigRow(r["value"], r["create_time"])
        return found_secrets, found_configs

    async def existing_names(
        self, secret_names: Sequence[str], config_keys: Sequence[str]
    ) -> tuple[set[str], set[str]]:
        """Lower-cased names that exist (for CheckTemplate; reads no ciphertext)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                """SELECT 's' AS kind, name_key AS k FROM secrets
                    WHERE name_key = ANY($1::text[]) AND delete_time IS NULL
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
                          FROM secrets
                         WHERE w.kind = 's' AND name_key % w.q AND delete_time IS NULL
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
        await usage.fold_all(self.db)  # usage reads are exact (storage/usage.py)
        async with self.db.transaction(isolation="repeatable_read") as conn:
            row = await conn.fetchrow(
                f"SELECT {_CONFIG_COLUMNS} FROM config_values WHERE key_lower = lower($1)",
                key,
            )
            if row is None:
                return None
            found = await usage.config_usage(conn, [row["key"].lower()])
        return replace(_config(row), usage=found[row["key"].lower()])

    async def list_configs(
        self, contains: str, after: str | None, limit: int
    ) -> tuple[list[ConfigRecord], int, bool]:
        rows, total, more = await self._page(
            "config_values", "key_lower", _CONFIG_COLUMNS, contains, after, limit
        )
        keys = [r["key"].lower() for r in rows]
        await usage.fold_all(self.db)  # usage reads are exact (storage/usage.py)
        async with self.db.connection() as conn:
            found = await usage.config_usage(conn, keys)
        records = [replace(_config(r), usage=found[k]) for r, k in zip(rows, keys, strict=True)]
        return records, total, more

    async def delete_config(
        self, key: str, audit: AuditRecord, *, guard_days: int = 0, force: bool = False
    ) -> None:
        """Delete a config value; the delete guard as for secrets (``CONFIG_IN_USE``)."""
        if guard_days > 0:
            await usage.fold_all(self.db)  # as in delete_secret
        async with self.db.transaction() as conn:
            current = await conn.fetchval(
                "SELECT key FROM config_values WHERE key_lower = lower($1) FOR UPDATE", key
            )
            if current is None:
                raise NotFound(f"config value not found: {key}", reason=Reason.CONFIG_NOT_FOUND)
            if guard_days > 0:
                used = await usage.config_in_use(conn, current.lower(), guard_days, exact=not force)
                if used is not None:
                    if not force:
                        raise usage.in_use_error("config value", current, used, guard_days)
                    audit.forced = True
            await conn.execute("DELETE FROM config_values WHERE key_lower = lower($1)", key)
            await insert_audit(conn, [audit])

    # ------------------------------------------------------------- master keys

    async def key_usage(self) -> list[KeyUsage]:
        """Every key id the database knows: registered check values and data keys wrapped
        (every retained version counts).

        Runs before migrations at start-up, so it also reads a schema from before versions
        existed (sealed values then lived in ``secrets``).
        """
        async with self.db.connection() as conn:
            versioned = await conn.fetchval(
                "SELECT to_regclass('public.secret_versions') IS NOT NULL"
            )
            wrapped = (
                "SELECT kek_id, count(*) AS n FROM secret_versions "
                "WHERE kek_id IS NOT NULL GROUP BY kek_id"
                if versioned
                else "SELECT kek_id, count(*) AS n FROM secrets GROUP BY kek_id"
            )
            rows = await conn.fetch(
                f"""SELECT COALESCE(m.key_id, s.kek_id) AS key_id, m.check_value,
                          COALESCE(m.wrap_count, 0) AS wrap_count, COALESCE(s.n, 0) AS data_keys
                     FROM master_keys m
                     FULL OUTER JOIN ({wrapped}) s ON s.kek_id = m.key_id
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
        rewrap: Callable[[SealedRow], Rewrapped | None],
        batch_size: int,
        after: tuple[uuid.UUID, int] | None = None,
    ) -> RewrapBatch:
        """Move up to ``batch_size`` retained versions under the primary, in (secret id,
        version) order after ``after`` (a keyset cursor, so rows that cannot be rewrapped
        are not retried forever): the data key is re-wrapped when another key wraps it, and
        the fingerprint is recomputed when it is not under the primary. ``rewrap`` returns
        None for a row it cannot open; that row is left as is.

        Rows are locked with SKIP LOCKED so concurrent writers and other rewrap runs are
        never blocked for long (a skipped row is picked up by the next pass); ciphertext
        is never touched.
        """
        async with self.db.transaction() as conn:
            rows = await conn.fetch(
                """SELECT s.id, s.name, v.version, v.kek_id, v.wrapped_dek, v.ciphertext
                     FROM secret_versions v JOIN secrets s ON s.id = v.secret_id
                    WHERE v.destroy_time IS NULL
                      AND (v.kek_id <> $1 OR v.fingerprint_key_id IS DISTINCT FROM $1)
                      AND ($3::uuid IS NULL OR (v.secret_id, v.version) > ($3, $4::bigint))
                    ORDER BY v.secret_id, v.version LIMIT $2 FOR UPDATE OF v SKIP LOCKED""",
                primary_key_id,
                batch_size,
                after[0] if after else None,
                after[1] if after else None,
            )
            updates = []
            wrapped = 0
            failed: list[str] = []
            for r in rows:
                row = _sealed_row(r, r["version"])
                new = rewrap(row)
                if new is None:
                    failed.append(row.name)
                    continue
                if new.sealed.key_id != primary_key_id or new.fingerprint[0] != primary_key_id:
                    raise ValueError("rewrap must wrap under the primary key it was asked for")
                if r["kek_id"] != primary_key_id:
                    wrapped += 1
                key_id, digest = new.fingerprint
                updates.append(
                    (
                        r["id"],
                        r["version"],
                        new.sealed.key_id,
                        new.sealed.wrapped_dek,
                        key_id,
                        digest,
                    )
                )
            if updates:
                await conn.executemany(
                    """UPDATE secret_versions
                          SET kek_id = $3, wrapped_dek = $4, fingerprint_key_id = $5,
                              fingerprint = $6
                        WHERE secret_id = $1 AND version = $2""",
                    updates,
                )
            if wrapped:
                new_count = await conn.fetchval(
                    "UPDATE master_keys SET wrap_count = wrap_count + $2 WHERE key_id = $1 "
                    "RETURNING wrap_count",
                    primary_key_id,
                    wrapped,
                )
                _note_wraps(primary_key_id, new_count, wrapped)
            return RewrapBatch(
                scanned=len(rows),
                rewrapped=len(updates),
                last_id=(rows[-1]["id"], rows[-1]["version"]) if rows else None,
                failed_names=tuple(failed),
            )

    async def count_not_under(self, primary_key_id: str) -> int:
        """Retained versions whose data key or fingerprint is not under the primary."""
        async with self.db.connection() as conn:
            return int(
                await conn.fetchval(
                    """SELECT count(*) FROM secret_versions
                        WHERE destroy_time IS NULL
                          AND (kek_id <> $1 OR fingerprint_key_id IS DISTINCT FROM $1)""",
                    primary_key_id,
                )
            )

    # ------------------------------------------------------------------- audit

    async def list_audit(
        self,
        query: AuditFilter,
        before: tuple[datetime, int] | None,
        limit: int,
    ) -> tuple[list[tuple[int, AuditRecord]], bool]:
        """Newest first by event time (buffered resolve events are written late, so the id
        alone is not time order); ``before`` is the (time, id) of the previous page's last."""
        sql, args = audit_query(query, before, limit)
        async with self.db.connection() as conn:
            rows = await conn.fetch(sql, *args)
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
                    match_count=r["match_count"],
                    forced=r["forced"],
                ),
            )
            for r in rows[:limit]
        ]
        return out, len(rows) > limit
