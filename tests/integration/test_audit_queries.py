"""ListAuditEvents filters (time range, method, outcome, tool, with secret and principal),
their errors, page tokens bound to them, the indexes behind them, and the console's
``GET /api/v1/audit`` taking the same filters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from interakt.vault.v1 import audit_service_pb2 as apb
from interakt.vault.v1 import audit_service_pb2_grpc as agrpc

from tests.support.console import bearer_client, console_vault, error_of
from tests.support.rpc import expect_error
from tests.support.vault import VaultFactory, VaultHandle
from vaultsvc.domain import AuditFilter
from vaultsvc.storage.repository import audit_query

PKG = "/interakt.vault.v1."
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def seed(vault: VaultHandle) -> None:
    """Ten known events at fixed times (besides what the test's own calls record)."""
    rows = [
        # minute, principal, method, outcome, tool, secrets
        (0, "alice", PKG + "SecretService/CreateSecret", "OK", "", ["db"]),
        (1, "alice", PKG + "SecretService/GetSecret", "NOT_FOUND", "", ["nope"]),
        (2, "bob", PKG + "ResolverService/ResolveTemplate", "OK", "deploy", ["db"]),
        (3, "bob", PKG + "ResolverService/ResolveTemplate", "PERMISSION_DENIED", "deploy", ["db"]),
        (4, "bob", PKG + "ResolverService/ResolveTemplate", "OK", "backup", ["s3"]),
        (5, "carol", PKG + "ResolverService/CheckTemplate", "OK", "deploy", []),
        (6, "", "UNAUTHENTICATED", "UNAUTHENTICATED", "", []),
        (7, "alice", PKG + "ConfigService/GetSecret", "OK", "", []),  # same bare name
        (8, "alice", PKG + "SecretService/DeleteSecret", "OK", "", ["db"]),
        (9, "vaultsvc", "vaultsvc/PurgeDeletedSecrets", "OK", "", ["db"]),
    ]
    for minute, principal, method, outcome, tool, names in rows:
        await vault.sql(
            "INSERT INTO audit_events (time, principal, method, outcome, tool, secret_names, "
            "request_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            T0 + timedelta(minutes=minute),
            principal,
            method,
            outcome,
            tool,
            names,
            f"seed-{minute}",
        )


async def listed(audit: agrpc.AuditServiceStub, page_size: int = 100, **filters: Any) -> list[str]:
    """request ids of every event the filters keep (seeded ones only), paging through."""
    found: list[str] = []
    token = ""
    while True:
        page = await audit.ListAuditEvents(
            apb.ListAuditEventsRequest(page_size=page_size, page_token=token, **filters),
            timeout=10,
        )
        found += [e.request_id for e in page.events if e.request_id.startswith("seed-")]
        token = page.next_page_token
        if not token:
            return found


def ids(*minutes: int) -> list[str]:
    """Newest first, as listed."""
    return [f"seed-{m}" for m in sorted(minutes, reverse=True)]


async def test_each_filter_alone_and_combined(vault: VaultHandle) -> None:
    await seed(vault)
    audit = agrpc.AuditServiceStub(vault.channel("admin"))
    assert await listed(audit, start_time=ts(T0)) == ids(*range(10))
    # start inclusive, end exclusive
    window = {
        "start_time": ts(T0 + timedelta(minutes=2)),
        "end_time": ts(T0 + timedelta(minutes=5)),
    }
    assert await listed(audit, **window) == ids(2, 3, 4)
    assert await listed(audit, end_time=ts(T0 + timedelta(minutes=1))) == ids(0)
    # method: full or bare (any service; the vault's own jobs and the aggregated refusals)
    assert await listed(audit, method=PKG + "ResolverService/ResolveTemplate") == ids(2, 3, 4)
    assert await listed(audit, method="ResolveTemplate") == ids(2, 3, 4)
    assert await listed(audit, method="GetSecret") == ids(1, 7)
    assert await listed(audit, method=PKG + "SecretService/GetSecret") == ids(1)
    assert await listed(audit, method="PurgeDeletedSecrets") == ids(9)
    assert await listed(audit, method="UNAUTHENTICATED") == ids(6)
    assert await listed(audit, method="NoSuchMethod") == []
    # outcome (any case), tool
    assert await listed(audit, outcome="OK", start_time=ts(T0)) == ids(0, 2, 4, 5, 7, 8, 9)
    assert await listed(audit, outcome="not_found") == ids(1)
    assert await listed(audit, tool="deploy") == ids(2, 3, 5)
    # combined, with secret and principal, and paged one event at a time
    assert await listed(audit, page_size=1, tool="deploy", outcome="OK") == ids(2, 5)
    assert await listed(
        audit, page_size=1, secret_name="DB", principal="bob", method="ResolveTemplate", **window
    ) == ids(2, 3)
    assert await listed(audit, principal="alice", method="GetSecret", outcome="OK") == ids(7)
    assert await listed(audit, secret_name="db", start_time=ts(T0 + timedelta(minutes=8))) == ids(
        8, 9
    )


async def test_invalid_filters_are_refused_with_a_reason(vault: VaultHandle) -> None:
    audit = agrpc.AuditServiceStub(vault.channel("admin"))
    bad: list[tuple[dict[str, Any], str]] = [
        ({"start_time": ts(T0), "end_time": ts(T0 - timedelta(seconds=1))}, "after start_time"),
        ({"start_time": ts(T0), "end_time": ts(T0)}, "after start_time"),
        ({"outcome": "FINE"}, "status code name"),
        ({"method": "/interakt.vault.v1.SecretService/"}, "full gRPC method"),
        ({"method": "SecretService/GetSecret"}, "full gRPC method"),
        ({"method": "Get Secret"}, "full gRPC method"),
        ({"method": "x" * 200}, "longer than"),
        ({"tool": "t\x00"}, "NUL"),
        ({"start_time": Timestamp(seconds=-62135596801)}, "not a valid time"),
    ]
    for filters, says in bad:
        message, _ = await expect_error(
            audit.ListAuditEvents(apb.ListAuditEventsRequest(**filters), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FILTER",
        )
        assert says in message, (filters, message)


async def test_page_tokens_are_bound_to_every_filter(vault: VaultHandle) -> None:
    await seed(vault)
    audit = agrpc.AuditServiceStub(vault.channel("admin"))
    filters: dict[str, Any] = {
        "start_time": ts(T0),
        "end_time": ts(T0 + timedelta(minutes=9)),
        "method": "ResolveTemplate",
        "outcome": "OK",
        "tool": "deploy",
    }
    first = await audit.ListAuditEvents(
        apb.ListAuditEventsRequest(page_size=1, outcome="OK", start_time=ts(T0)), timeout=10
    )
    assert first.next_page_token
    # the same filters (outcome in another case means the same) go on
    await audit.ListAuditEvents(
        apb.ListAuditEventsRequest(
            page_size=1, outcome="ok", start_time=ts(T0), page_token=first.next_page_token
        ),
        timeout=10,
    )
    changes: list[dict[str, Any]] = [
        {"outcome": "OK"},  # start_time dropped
        {"outcome": "OK", "start_time": ts(T0 + timedelta(seconds=1))},
        {"outcome": "OK", "start_time": ts(T0), "end_time": filters["end_time"]},
        {"outcome": "OK", "start_time": ts(T0), "method": "GetSecret"},
        {"outcome": "OK", "start_time": ts(T0), "tool": "deploy"},
        {"outcome": "NOT_FOUND", "start_time": ts(T0)},
    ]
    for other in changes:
        message, _ = await expect_error(
            audit.ListAuditEvents(
                apb.ListAuditEventsRequest(page_size=1, page_token=first.next_page_token, **other),
                timeout=10,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_TOKEN",
        )
        assert "different filter" in message


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (AuditFilter(start_time=T0, end_time=T0 + timedelta(hours=1)), "audit_events_time"),
        (AuditFilter(method="ResolveTemplate"), "audit_events_method"),
        (AuditFilter(method=PKG + "SecretService/GetSecret"), "audit_events_method"),
        (AuditFilter(outcome="NOT_FOUND"), "audit_events_outcome"),
        (AuditFilter(tool="deploy"), "audit_events_tool"),
        (AuditFilter(principal="bob"), "audit_events_principal"),
        (AuditFilter(secret_name="db"), "audit_events_secret_names"),
    ],
)
async def test_common_filters_use_an_index(
    vault: VaultHandle, query: AuditFilter, index: str
) -> None:
    """The very SQL a page runs, planned with sequential scans made unattractive (the test
    table is tiny): an index must be able to serve it, in list order where it can."""
    sql, args = audit_query(query, (T0 + timedelta(days=1), 10**12), 100)
    conn = await asyncpg.connect(vault.database_url, timeout=10)
    try:
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))
    finally:
        await conn.close()
    assert index in plan, plan


async def test_console_api_takes_the_same_filters(make_vault: VaultFactory) -> None:
    vault = await console_vault(make_vault)
    await seed(vault)
    async with bearer_client(vault) as admin:
        reply = await admin.get(
            "/api/v1/audit",
            params={
                "startTime": "2026-03-01T12:02:00Z",
                "end_time": "2026-03-01T12:05:00+00:00",
                "method": "ResolveTemplate",
                "outcome": "OK",
                "tool": "deploy",
            },
        )
        assert reply.status_code == 200, reply.text
        assert [e["requestId"] for e in reply.json()["events"]] == ["seed-2"]
        for params, says in [
            ({"startTime": "yesterday"}, "RFC 3339"),
            ({"startTime": "2026-03-01T12:05:00Z", "endTime": "2026-03-01T12:00:00Z"}, "after"),
            ({"outcome": "MEH"}, "status code"),
            ({"method": "a/b/c"}, "full gRPC method"),
        ]:
            reply = await admin.get("/api/v1/audit", params=params)
            assert error_of(reply)[::2] == (400, "INVALID_FILTER"), (params, reply.text)
            assert says in reply.text
