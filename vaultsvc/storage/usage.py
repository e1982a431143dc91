"""Usage of secrets and config values by resolves, and the delete guard that reads it.

A successful resolve's audit event names the secrets (ids) and config values (keys) it
used. The group commit writes a batch of events and their usage in ONE statement (see
:func:`audit_statement`): one upsert per distinct item and per distinct (item, tool),
aggregated here and sorted so concurrent batches lock rows in the same order
(``vault_record_usage`` in ``V8__usage.sql``). A use the client saw succeed is therefore
never lost to a crash, and the delete guard, which locks the same usage row inside the
delete's transaction, sees every committed one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vaultsvc.domain import AuditRecord, ToolUse, UsageRecord
from vaultsvc.errors import FailedPrecondition, Reason, listed
from vaultsvc.limits import MAX_USAGE_TOOLS

_Count = tuple[int, datetime]


def _add(table: dict[Any, _Count], key: Any, time: datetime) -> None:
    count, last = table.get(key, (0, time))
    table[key] = (count + 1, max(last, time))


@dataclass(frozen=True)
class UsageBatch:
    """The usage of a batch of audit events, aggregated and in lock order."""

    secrets: list[tuple[uuid.UUID, int, datetime]]
    secret_tools: list[tuple[uuid.UUID, str, int, datetime]]
    configs: list[tuple[str, int, datetime]]
    config_tools: list[tuple[str, str, int, datetime]]

    @classmethod
    def of(cls, records: Iterable[AuditRecord]) -> UsageBatch:
        secrets: dict[uuid.UUID, _Count] = {}
        secret_tools: dict[tuple[uuid.UUID, str], _Count] = {}
        configs: dict[str, _Count] = {}
        config_tools: dict[tuple[str, str], _Count] = {}
        for r in records:
            if r.outcome != "OK" or r.time is None:
                continue
            for secret_id in set(r.used_secrets):
                _add(secrets, secret_id, r.time)
                if r.tool:
                    _add(secret_tools, (secret_id, r.tool), r.time)
            for key in set(r.used_configs):
                _add(configs, key, r.time)
                if r.tool:
                    _add(config_tools, (key, r.tool), r.time)
        return cls(
            secrets=[(k, n, t) for k, (n, t) in sorted(secrets.items())],
            secret_tools=[(k[0], k[1], n, t) for k, (n, t) in sorted(secret_tools.items())],
            configs=[(k, n, t) for k, (n, t) in sorted(configs.items())],
            config_tools=[(k[0], k[1], n, t) for k, (n, t) in sorted(config_tools.items())],
        )

    def __bool__(self) -> bool:
        return bool(self.secrets or self.configs)

    def parameters(self) -> list[Any]:
        """The arguments of ``vault_record_usage`` (one array per column)."""

        def columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
            return [[row[i] for row in rows] for i in range(width)]

        return [
            *columns(self.secrets, 3),
            *columns(self.secret_tools, 4),
            *columns(self.configs, 3),
            *columns(self.config_tools, 4),
            MAX_USAGE_TOOLS,
        ]


def audit_statement(insert_sql: str, audit_params: int) -> str:
    """``insert_sql`` (the audit INSERT, ``audit_params`` parameters) and the batch's usage
    as ONE statement: one implicit transaction, one round trip."""
    n = audit_params
    args = [
        f"${n + 1}::uuid[]",
        f"${n + 2}::bigint[]",
        f"${n + 3}::timestamptz[]",
        f"${n + 4}::uuid[]",
        f"${n + 5}::text[]",
        f"${n + 6}::bigint[]",
        f"${n + 7}::timestamptz[]",
        f"${n + 8}::text[]",
        f"${n + 9}::bigint[]",
        f"${n + 10}::timestamptz[]",
        f"${n + 11}::text[]",
        f"${n + 12}::text[]",
        f"${n + 13}::bigint[]",
        f"${n + 14}::timestamptz[]",
        f"${n + 15}::integer",
    ]
    return f"WITH audit AS ({insert_sql}) SELECT vault_record_usage({', '.join(args)})"


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


async def secret_in_use(conn: Any, secret_id: uuid.UUID, days: int) -> UsageRecord | None:
    """Inside a delete's transaction, after the secret row is locked: its usage if a
    resolve used it within ``days``, else None.

    The usage row is locked (created empty if need be), so a group commit recording a use
    of this secret either committed before (and is seen here) or waits for the delete."""
    await conn.execute(
        "INSERT INTO secret_usage (secret_id) VALUES ($1) ON CONFLICT DO NOTHING", secret_id
    )
    row = await conn.fetchrow(
        "SELECT last_resolve_time > now() - make_interval(days => $2) AS recent "
        "FROM secret_usage WHERE secret_id = $1 FOR UPDATE",
        secret_id,
        days,
    )
    if row is None or not row["recent"]:
        return None
    return (await secret_usage(conn, [secret_id]))[secret_id]


async def config_in_use(conn: Any, key_lower: str, days: int) -> UsageRecord | None:
    """:func:`secret_in_use` for a config value (by lower-cased key)."""
    await conn.execute(
        "INSERT INTO config_usage (key_lower) VALUES ($1) ON CONFLICT DO NOTHING", key_lower
    )
    row = await conn.fetchrow(
        "SELECT last_resolve_time > now() - make_interval(days => $2) AS recent "
        "FROM config_usage WHERE key_lower = $1 FOR UPDATE",
        key_lower,
        days,
    )
    if row is None or not row["recent"]:
        return None
    return (await config_usage(conn, [key_lower]))[key_lower]


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
