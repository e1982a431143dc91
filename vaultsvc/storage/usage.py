"""Usage of secrets and config values by resolves, and the delete guard that reads it.

A successful resolve's audit event names the secrets (ids) and config values (keys) it
used. Recording it must not touch shared rows on the hot path, so it happens in two steps
(``V12__usage_pending.sql``):

1. **Append.** The group commit writes a batch of events and the batch's usage in ONE
   statement (:func:`audit_statement`): one ``usage_pending`` row per distinct (item,
   tool), aggregated here (:class:`UsageBatch`). Append-only: no upsert, no row lock
   another batch could wait on, no index. A use the client saw succeed is therefore never
   lost to a crash (its pending row commits with its event).
2. **Fold.** :func:`fold` (``vault_fold_usage``) deletes pending rows and adds them to the
   usage tables in one transaction, at most :data:`FOLD_BATCH` rows at a time: each
   pending row is counted exactly once, whoever folds it. Every process folds about once a
   second (:mod:`vaultsvc.vault.usage_fold`, one process at a time through an advisory
   lock), and every read of usage folds first (:func:`fold_all`), so reads are exact: a
   use answered before the read began is in its counts. A fold locks the items it folds
   (``FOR KEY SHARE``) before their pending and usage rows and folds only those
   (``V13__usage_races.sql``): a delete or purge of an item waits for (or, the purge,
   skips) the fold holding it, so no usage row outlives its item and the two cannot
   deadlock. A config value's pending row also names the generation the resolve read
   (its ``create_time``, :class:`~vaultsvc.storage.repository.ConfigRow`): a use whose
   batch commits after an unguarded delete of the value is never counted for a value
   created again under the key (``V14__usage_config_generation.sql``).

The delete guard (:func:`secret_in_use`, :func:`config_in_use`) takes
``usage_pending`` in SHARE ROW EXCLUSIVE mode inside the delete's transaction: that waits
for the audit batches in flight to commit and holds new ones until the delete commits,
then folds the item's pending rows and reads its usage. A use committed before the delete
is always seen, and none can commit between the check and the delete. The price: while a
guarded delete's transaction runs (milliseconds: one item's fold, the delete itself),
every process's audit batches, and so the resolves waiting on them, pause. The wait for
the lock is bounded by :data:`GUARD_LOCK_TIMEOUT_MS` (then UNAVAILABLE, retryable), well
under the audit write timeout the paused batches run under.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from vaultsvc.domain import AuditRecord, ToolUse, UsageRecord
from vaultsvc.errors import FailedPrecondition, Reason, Unavailable, listed
from vaultsvc.limits import MAX_USAGE_TOOLS

_log = logging.getLogger("vaultsvc.usage")

FOLD_BATCH = 5000
"""Pending rows one fold transaction takes at most: a backlog is folded in short
transactions, never one that holds thousands of row locks for long."""

FOLD_ROUNDS_BEFORE_READ = 20
"""Most batches a read folds before it reads (see :func:`fold_all`)."""
FOLD_LOCK_ID = 0x7661756C7475  # "vaultu"
"""Held (per transaction) by the process running the periodic fold; the others skip."""

GUARD_LOCK_TIMEOUT_MS = 500
"""How long a guarded delete waits for ``usage_pending``: for the audit batches and folds
in flight (milliseconds), or an autovacuum of the table, which gives way only after
``deadlock_timeout`` (1 s: the delete fails UNAVAILABLE first, to be retried). Batches
queued behind the waiting delete wait as long, so this stays well below the default audit
write timeout (2 s); with ``audit_write_timeout`` below 0.5 s such a wait can fail them."""

_Count = tuple[int, datetime]
_Item = tuple[uuid.UUID | None, str | None, datetime | None, str]
"""(secret id, or config key and the config value's generation; tool)."""


@dataclass(frozen=True)
class UsageBatch:
    """The usage of a batch of audit events: one row per distinct (item, tool), tool ""
    for resolves that named none; an item's count is the sum over its rows. A config value
    is the key and the generation the resolve read (``ConfigRow.create_time``): the fold
    drops a use of a generation that is gone, so a value deleted and created again under
    the key never inherits its predecessor's uses (V14)."""

    rows: list[tuple[uuid.UUID | None, str | None, datetime | None, str, int, datetime]]

    @classmethod
    def of(cls, records: Iterable[AuditRecord]) -> UsageBatch:
        counts: dict[_Item, _Count] = {}

        def add(item: _Item, time: datetime) -> None:
            count, last = counts.get(item, (0, time))
            counts[item] = (count + 1, max(last, time))

        for r in records:
            if r.outcome != "OK" or r.time is None:
                continue
            tool = r.tool or ""
            for secret_id in set(r.used_secrets):
                add((secret_id, None, None, tool), r.time)
            for key, created in set(r.used_configs):
                add((None, key, created, tool), r.time)
        return cls([(*item, n, t) for item, (n, t) in counts.items()])

    def __bool__(self) -> bool:
        return bool(self.rows)

    def parameters(self) -> list[list[Any]]:
        """The arguments of the ``usage_pending`` INSERT (one array per column)."""
        return [[row[i] for row in self.rows] for i in range(6)]


def audit_statement(insert_sql: str, audit_params: int) -> str:
    """``insert_sql`` (the audit INSERT, ``audit_params`` parameters) and the batch's
    pending usage as ONE statement: one implicit transaction, one round trip."""
    n = audit_params
    return (
        f"WITH audit AS ({insert_sql}) "
        "INSERT INTO usage_pending (secret_id, key_lower, config_created, tool, uses, last_time) "
        f"SELECT * FROM unnest(${n + 1}::uuid[], ${n + 2}::text[], ${n + 3}::timestamptz[], "
        f"${n + 4}::text[], ${n + 5}::bigint[], ${n + 6}::timestamptz[])"
    )


# ---------------------------------------------------------------------------- folding


_FOLD_SQL = "SELECT vault_fold_usage($1, $2)"
# CASE evaluates the lock first; the lock lasts for the statement's own transaction.
_FOLD_ONLY_ONE_SQL = (
    "SELECT CASE WHEN pg_try_advisory_xact_lock($3) THEN vault_fold_usage($1, $2) END"
)


async def fold_batch(db: Any, *, only_one: bool = False, limit: int = FOLD_BATCH) -> int | None:
    """Fold at most ``limit`` pending rows in one transaction (one statement, one round
    trip); how many it took (``limit``: more may be left). ``only_one``: only if no other
    process is folding (the periodic fold), None when one is."""
    async with db.connection() as conn:
        if only_one:
            n = await conn.fetchval(_FOLD_ONLY_ONE_SQL, limit, MAX_USAGE_TOOLS, FOLD_LOCK_ID)
            return None if n is None else int(n)
        return int(await conn.fetchval(_FOLD_SQL, limit, MAX_USAGE_TOOLS))


async def fold_all(
    db: Any, *, limit: int = FOLD_BATCH, rounds: int = FOLD_ROUNDS_BEFORE_READ
) -> int:
    """Fold the pending rows committed before the call (before a read of usage), batch by
    batch, at most ``rounds`` batches: how many rows this caller folded. A fold running
    elsewhere at the same time is waited for where both meet a row, so its rows are in the
    usage tables on return too. Only a backlog beyond ``rounds * limit`` rows (the folds
    stopped for a long while) is left for the periodic fold: the read then shows the
    usage folded so far rather than waiting without bound."""
    folded = 0
    for _ in range(rounds):
        n = await fold_batch(db, limit=limit)
        assert n is not None  # only_one=False always folds
        folded += n
        if n < limit:
            break
    return folded


# ------------------------------------------------------------------------- reading


def _usage(row: Any, tools: list[ToolUse]) -> UsageRecord:
    return UsageRecord(
        last_resolve_time=row["last_resolve_time"],
        resolve_count=int(row["resolve_count"]),
        tools=tuple(tools),
    )


async def secret_usage(conn: Any, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, UsageRecord]:
    """Usage of the secrets ``ids`` (a never-resolved secret: an empty record)."""
    return await _load(
        conn,
        list(ids),
        "SELECT secret_id AS k, last_resolve_time, resolve_count FROM secret_usage "
        "WHERE secret_id = ANY($1::uuid[])",
        "SELECT secret_id AS k, tool, last_resolve_time, resolve_count FROM ("
        " SELECT *, row_number() OVER (PARTITION BY secret_id"
        "  ORDER BY last_resolve_time DESC, tool) AS rn"
        " FROM secret_tool_usage WHERE secret_id = ANY($1::uuid[])) t "
        "WHERE rn <= $2 ORDER BY secret_id, rn",
    )


async def config_usage(conn: Any, keys: Sequence[str]) -> dict[str, UsageRecord]:
    """Usage of the config values ``keys`` (lower-cased)."""
    return await _load(
        conn,
        list(keys),
        "SELECT key_lower AS k, last_resolve_time, resolve_count FROM config_usage "
        "WHERE key_lower = ANY($1::text[])",
        "SELECT key_lower AS k, tool, last_resolve_time, resolve_count FROM ("
        " SELECT *, row_number() OVER (PARTITION BY key_lower"
        "  ORDER BY last_resolve_time DESC, tool) AS rn"
        " FROM config_tool_usage WHERE key_lower = ANY($1::text[])) t "
        "WHERE rn <= $2 ORDER BY key_lower, rn",
    )


async def _load(conn: Any, keys: list[Any], items_sql: str, tools_sql: str) -> dict[Any, Any]:
    out: dict[Any, UsageRecord] = {k: UsageRecord() for k in keys}
    if not keys:
        return out
    rows = await conn.fetch(items_sql, keys)
    if not rows:
        return out
    tools: dict[Any, list[ToolUse]] = {}
    for t in await conn.fetch(tools_sql, keys, MAX_USAGE_TOOLS):
        tools.setdefault(t["k"], []).append(
            ToolUse(t["tool"], t["last_resolve_time"], int(t["resolve_count"]))
        )
    for row in rows:
        out[row["k"]] = _usage(row, tools.get(row["k"], []))
    return out


# ---------------------------------------------------------------------- the guard


async def _hold_pending(conn: Any) -> None:
    """Inside a delete's transaction: wait for the audit batches in flight (and any fold)
    to commit and hold new ones until this transaction ends (see the module docstring).
    SHARE ROW EXCLUSIVE rather than SHARE: two guarded deletes, each folding, would
    deadlock on each other's SHARE lock; this mode makes them take turns."""
    await conn.execute(
        f"SET LOCAL lock_timeout = {GUARD_LOCK_TIMEOUT_MS}; "
        "LOCK TABLE usage_pending IN SHARE ROW EXCLUSIVE MODE; "
        "SET LOCAL lock_timeout TO DEFAULT"
    )


async def _guard(
    conn: Any, fold_args: tuple[Any, Any], usage_sql: str, key: Any, days: int, hold: bool
) -> bool:
    if hold:
        try:
            await _hold_pending(conn)
        except asyncpg.LockNotAvailableError:
            _log.warning("delete guard: audit batches held usage_pending too long; retry")
            raise Unavailable(
                "the delete guard could not check recent use in time (resolves are being "
                "recorded); retry",
                reason=Reason.DATABASE_UNAVAILABLE,
            ) from None
        await conn.fetchval("SELECT vault_fold_usage(0, $1, $2, $3)", MAX_USAGE_TOOLS, *fold_args)
    return bool(await conn.fetchval(usage_sql, key, days))


async def secret_in_use(
    conn: Any, secret_id: uuid.UUID, days: int, *, exact: bool = True
) -> UsageRecord | None:
    """Inside a delete's transaction, after the secret row is locked: its usage if a
    resolve used it within ``days``, else None. ``exact``: every use committed before is
    folded and seen, and none commits before the delete does (module docstring); else (a
    forced delete, which only marks its event) the usage tables as they are (the caller
    folded just before), and audit batches never wait.

    Not exact, it folds nothing in this transaction and takes no lock on usage_pending, so
    audit batches never wait for a forced delete."""
    recent = await _guard(
        conn,
        (secret_id, None),
        "SELECT last_resolve_time > now() - make_interval(days => $2) "
        "FROM secret_usage WHERE secret_id = $1",
        secret_id,
        days,
        exact,
    )
    return (await secret_usage(conn, [secret_id]))[secret_id] if recent else None


async def config_in_use(
    conn: Any, key_lower: str, days: int, *, exact: bool = True
) -> UsageRecord | None:
    """:func:`secret_in_use` for a config value (by lower-cased key)."""
    recent = await _guard(
        conn,
        (None, key_lower),
        "SELECT last_resolve_time > now() - make_interval(days => $2) "
        "FROM config_usage WHERE key_lower = $1",
        key_lower,
        days,
        exact,
    )
    return (await config_usage(conn, [key_lower]))[key_lower] if recent else None


def in_use_error(what: str, name: str, usage: UsageRecord, days: int) -> FailedPrecondition:
    """FAILED_PRECONDITION ``SECRET_IN_USE`` (``what`` "secret") or ``CONFIG_IN_USE``,
    naming the tools and the last resolve time (message and ErrorInfo metadata)."""
    assert usage.last_resolve_time is not None
    stamp = rfc3339(usage.last_resolve_time)
    tools = [t.tool for t in usage.tools]
    by = listed(tools) if tools else "resolves that named no tool"
    return FailedPrecondition(
        f"{what} {name} is in use: last resolved at {stamp} by {by} (within the last"
        f" {days} days); delete with force to delete it anyway",
        reason=Reason.SECRET_IN_USE if what == "secret" else Reason.CONFIG_IN_USE,
        metadata={"tools": listed(tools, ",") if tools else "", "last_resolve_time": stamp},
    )


def rfc3339(moment: datetime) -> str:
    """``2026-11-29T05:31:12.123456Z``: UTC, as protobuf's JSON form writes times."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
