"""The audit trail: one event per RPC, ListAuditEvents filters and paging, fail-closed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from interakt.vault.v1 import audit_service_pb2 as apb
from interakt.vault.v1 import audit_service_pb2_grpc as agrpc
from interakt.vault.v1 import config_service_pb2 as cpb
from interakt.vault.v1 import config_service_pb2_grpc as cgrpc
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rgrpc
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as sgrpc

from tests.support.vault import VaultHandle

PKG = "/interakt.vault.v1."
VALUE = "audit-value-8c1f2e"


def rid(request_id: str) -> list[tuple[str, str]]:
    return [("x-request-id", request_id)]


async def fails(call: Awaitable[Any], code: grpc.StatusCode) -> str:
    """Await a call that must fail with ``code``; returns the ErrorInfo reason."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    err = info.value
    assert err.code() == code, (err.code(), err.details())
    status = rpc_status.from_call(err)
    assert status is not None
    error_info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(error_info)
    return str(error_info.reason)


async def list_all(
    audit: agrpc.AuditServiceStub, page_size: int = 1000, **filters: str
) -> list[apb.AuditEvent]:
    events: list[apb.AuditEvent] = []
    token = ""
    while True:
        page = await audit.ListAuditEvents(
            apb.ListAuditEventsRequest(page_size=page_size, page_token=token, **filters),
            timeout=10,
        )
        assert len(page.events) <= page_size
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


# ------------------------------------------------------------- one event per RPC


async def test_every_call_success_or_failure_leaves_one_event(vault: VaultHandle) -> None:
    admin = sgrpc.SecretServiceStub(vault.channel("admin"))
    viewer = sgrpc.SecretServiceStub(vault.channel("viewer"))
    anonymous = sgrpc.SecretServiceStub(vault.channel(None))
    configs = cgrpc.ConfigServiceStub(vault.channel("admin"))
    resolver = rgrpc.ResolverServiceStub(vault.channel("resolver"))
    admin_resolver = rgrpc.ResolverServiceStub(vault.channel("admin"))
    audit = agrpc.AuditServiceStub(vault.channel("admin"))
    started = datetime.now(UTC)

    created = await admin.CreateSecret(
        spb.CreateSecretRequest(name="Audit_Key", value=VALUE), metadata=rid("r-create")
    )
    await configs.PutConfigValue(
        cpb.PutConfigValueRequest(key="api_host", value="api.example.com"), metadata=rid("r-put")
    )
    get_call = viewer.GetSecret(spb.GetSecretRequest(name="AUDIT_KEY"), metadata=rid("r-get"))
    await get_call
    # The server names the call; the client's id comes back beside it and is recorded.
    assert ("x-client-request-id", "r-get") in tuple(await get_call.trailing_metadata() or ())
    await fails(
        admin.CreateSecret(
            spb.CreateSecretRequest(name="audit_key", value=VALUE), metadata=rid("r-dup")
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    await fails(
        viewer.GetSecret(spb.GetSecretRequest(name="missing_one"), metadata=rid("r-missing")),
        grpc.StatusCode.NOT_FOUND,
    )
    await fails(
        admin.UpdateSecret(
            spb.UpdateSecretRequest(name="audit_key", value=VALUE, etag="stale"),
            metadata=rid("r-etag"),
        ),
        grpc.StatusCode.ABORTED,
    )
    await fails(
        viewer.CreateSecret(
            spb.CreateSecretRequest(name="sneaky", value=VALUE), metadata=rid("r-denied")
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await fails(
        anonymous.ListSecrets(spb.ListSecretsRequest(), metadata=rid("r-anon")),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    fields = [
        rpb.TemplateField(key="url", template="https://{{config:api_host}}/v1"),
        rpb.TemplateField(key="auth", template="Bearer {{ secret:Audit_Key }}"),
    ]
    reply = await resolver.ResolveTemplate(
        rpb.ResolveTemplateRequest(fields=fields, tool="orders-http"), metadata=rid("r-resolve")
    )
    assert reply.fields[1].value == f"Bearer {VALUE}"
    missing = [*fields, rpb.TemplateField(key="x", template="{{secret:nope}}")]
    await fails(
        resolver.ResolveTemplate(
            rpb.ResolveTemplateRequest(fields=missing, tool="orders-http"),
            metadata=rid("r-resolve-missing"),
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await fails(
        admin_resolver.ResolveTemplate(
            rpb.ResolveTemplateRequest(fields=fields, tool="admin-try"),
            metadata=rid("r-admin-resolve"),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await admin_resolver.CheckTemplate(
        rpb.CheckTemplateRequest(fields=fields), metadata=rid("r-check")
    )
    await admin.DeleteSecret(
        spb.DeleteSecretRequest(name="audit_key", etag=created.etag, force=True),
        metadata=rid("r-delete"),
    )
    # The server assigns every request id; an unsafe one the client sent is not echoed.
    stats_call = viewer.GetVaultStats(
        spb.GetVaultStatsRequest(), metadata=rid("bad id with spaces")
    )
    await stats_call
    trailing = await stats_call.trailing_metadata()
    replaced = next(str(v) for k, v in trailing or () if k == "x-request-id")
    assert replaced != "bad id with spaces" and len(replaced) == 32
    assert "x-client-request-id" not in dict(trailing or ())
    await vault.runtime.audit.flush()
    finished = datetime.now(UTC)

    events = await list_all(audit)
    # The refused anonymous call is one aggregated event (per peer address and minute).
    refused = [e for e in events if e.method == "UNAUTHENTICATED"]
    assert [(e.count, e.outcome, e.principal, e.peer) for e in refused] == [
        (1, "UNAUTHENTICATED", "", "ipv4:127.0.0.1")
    ]
    by_id = {e.client_request_id: e for e in events if e.method != "UNAUTHENTICATED"}
    # The listing itself is recorded after it answers, so it is not in its own result.
    assert len(by_id) == len(events) - 1 == 13
    assert by_id["bad id with spaces"].request_id == replaced
    assert len({e.request_id for e in events}) == 14

    secret = PKG + "SecretService/"
    resolve = PKG + "ResolverService/"
    expected = {
        "r-create": ("test-admin", secret + "CreateSecret", "OK", ["audit_key"], ""),
        "r-put": ("test-admin", PKG + "ConfigService/PutConfigValue", "OK", [], ""),
        "r-get": ("test-viewer", secret + "GetSecret", "OK", ["audit_key"], ""),
        "r-dup": ("test-admin", secret + "CreateSecret", "ALREADY_EXISTS", ["audit_key"], ""),
        "r-missing": ("test-viewer", secret + "GetSecret", "NOT_FOUND", ["missing_one"], ""),
        "r-etag": ("test-admin", secret + "UpdateSecret", "ABORTED", ["audit_key"], ""),
        "r-denied": ("test-viewer", secret + "CreateSecret", "PERMISSION_DENIED", [], ""),
        "r-resolve": (
            "test-resolver",
            resolve + "ResolveTemplate",
            "OK",
            ["audit_key"],
            "orders-http",
        ),
        "r-resolve-missing": (
            "test-resolver",
            resolve + "ResolveTemplate",
            "NOT_FOUND",
            ["audit_key", "nope"],
            "orders-http",
        ),
        "r-admin-resolve": ("test-admin", resolve + "ResolveTemplate", "PERMISSION_DENIED", [], ""),
        "r-check": ("test-admin", resolve + "CheckTemplate", "OK", ["audit_key"], ""),
        "r-delete": ("test-admin", secret + "DeleteSecret", "OK", ["audit_key"], ""),
        "bad id with spaces": ("test-viewer", secret + "GetVaultStats", "OK", [], ""),
    }
    for request_id, (principal, method, outcome, names, tool) in expected.items():
        event = by_id[request_id]
        got = (event.principal, event.method, event.outcome, list(event.secret_names), event.tool)
        assert got == (principal, method, outcome, names, tool), request_id
        assert event.peer.startswith("ipv4:127.0.0.1:"), event.peer
        when = event.time.ToDatetime(tzinfo=UTC)
        assert started - timedelta(seconds=1) <= when <= finished + timedelta(seconds=1)

    rows = await vault.sql("SELECT * FROM audit_events")
    assert VALUE not in repr([dict(r) for r in rows])
    assert "api.example.com" not in repr([dict(r) for r in rows])


async def test_listing_is_itself_audited_and_mutation_events_are_immediate(
    vault: VaultHandle,
) -> None:
    admin = sgrpc.SecretServiceStub(vault.channel("admin"))
    audit = agrpc.AuditServiceStub(vault.channel("admin"))
    await admin.CreateSecret(spb.CreateSecretRequest(name="k1", value="v"), metadata=rid("m1"))
    # Written in the create's own transaction: visible with no flush at all.
    rows = await vault.sql("SELECT client_request_id FROM audit_events")
    assert [r["client_request_id"] for r in rows] == ["m1"]
    await audit.ListAuditEvents(apb.ListAuditEventsRequest(), metadata=rid("list-1"))
    events = await list_all(audit)
    assert [e.client_request_id for e in events][-2:] == ["list-1", "m1"]
    assert events[-2].method == PKG + "AuditService/ListAuditEvents"


# ------------------------------------------------------------ filters and paging


async def test_filters_and_paging(vault: VaultHandle) -> None:
    admin = sgrpc.SecretServiceStub(vault.channel("admin"))
    viewer = sgrpc.SecretServiceStub(vault.channel("viewer"))
    audit = agrpc.AuditServiceStub(vault.channel("admin"))
    for name in ("alpha", "beta"):
        await admin.CreateSecret(spb.CreateSecretRequest(name=name, value="v"))
    for i in range(30):
        await viewer.GetSecret(spb.GetSecretRequest(name=("alpha", "beta")[i % 2]))
    for i in range(25):
        await admin.GetSecret(spb.GetSecretRequest(name="alpha"), metadata=rid(f"a{i}"))
    total = 2 + 30 + 25

    first = await audit.ListAuditEvents(apb.ListAuditEventsRequest(), metadata=rid("L1"))
    assert len(first.events) == 50, "default page size"
    assert first.next_page_token

    everything = await list_all(audit)
    assert len(everything) == total + 1  # plus the listing L1
    rows = await vault.sql(
        "SELECT request_id FROM audit_events WHERE method NOT LIKE '%/ListAuditEvents' "
        "OR client_request_id = 'L1' ORDER BY id DESC"
    )
    assert [e.request_id for e in everything] == [r["request_id"] for r in rows]
    times = [e.time.ToDatetime() for e in everything]
    assert times == sorted(times, reverse=True), "newest first"
    assert everything[0].client_request_id == "L1"

    for size in (1, 7, 50):
        paged = await list_all(audit, page_size=size)
        # Listings made while paging are newer than the first page: compare the older part.
        tail = [e.request_id for e in paged if not e.method.endswith("ListAuditEvents")]
        assert tail == [e.request_id for e in everything[1:]], size
        assert len(tail) == total

    alpha = await list_all(audit, page_size=4, secret_name="ALPHA")
    assert len(alpha) == 1 + 15 + 25
    assert all("alpha" in e.secret_names for e in alpha)
    by_viewer = await list_all(audit, page_size=4, principal="test-viewer")
    assert len(by_viewer) == 30
    assert {e.principal for e in by_viewer} == {"test-viewer"}
    both = await list_all(audit, page_size=4, principal="test-viewer", secret_name="beta")
    assert len(both) == 15
    assert await list_all(audit, principal="nobody") == []
    assert await list_all(audit, secret_name="gamma") == []

    # A page token only continues the listing it was issued for.
    page = await audit.ListAuditEvents(apb.ListAuditEventsRequest(page_size=2, secret_name="alpha"))
    reason = await fails(
        audit.ListAuditEvents(
            apb.ListAuditEventsRequest(page_token=page.next_page_token, secret_name="beta")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert reason == "INVALID_PAGE_TOKEN"
    for token in ("garbage", "eyJ2IjoxLCJhIjoieCIsImYiOiJceDFmIn0"):
        await fails(
            audit.ListAuditEvents(apb.ListAuditEventsRequest(page_token=token)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    await fails(
        audit.ListAuditEvents(apb.ListAuditEventsRequest(page_size=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    for bad in ("a\x00b", "x" * 129):
        await fails(
            audit.ListAuditEvents(apb.ListAuditEventsRequest(secret_name=bad)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        await fails(
            audit.ListAuditEvents(apb.ListAuditEventsRequest(principal=bad)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    big = await audit.ListAuditEvents(apb.ListAuditEventsRequest(page_size=5000))
    assert not big.next_page_token


# ------------------------------------------------------------------- fail closed


BREAK_AUDIT = [
    """CREATE FUNCTION audit_broken() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'audit storage broken (test)'; END $$""",
    """CREATE TRIGGER audit_broken BEFORE INSERT ON audit_events
       FOR EACH ROW EXECUTE FUNCTION audit_broken()""",
]
REPAIR_AUDIT = ["DROP TRIGGER audit_broken ON audit_events", "DROP FUNCTION audit_broken()"]


async def state(vault: VaultHandle) -> list[Any]:
    secrets = await vault.sql(
        "SELECT name, etag, current_version, description FROM secrets ORDER BY name"
    )
    configs = await vault.sql("SELECT key, value FROM config_values ORDER BY key")
    stats = await vault.sql("SELECT total_secrets, last_update_time FROM vault_state")
    keys = await vault.sql("SELECT key_id, wrap_count FROM master_keys ORDER BY key_id")
    return [[tuple(r) for r in rows] for rows in (secrets, configs, stats, keys)]


async def test_requests_fail_closed_when_audit_events_cannot_be_written(
    vault: VaultHandle,
) -> None:
    admin = sgrpc.SecretServiceStub(vault.channel("admin"))
    viewer = sgrpc.SecretServiceStub(vault.channel("viewer"))
    configs = cgrpc.ConfigServiceStub(vault.channel("admin"))
    resolver = rgrpc.ResolverServiceStub(vault.channel("resolver"))
    audit = agrpc.AuditServiceStub(vault.channel("admin"))
    kept = await admin.CreateSecret(spb.CreateSecretRequest(name="kept", value=VALUE))
    await configs.PutConfigValue(cpb.PutConfigValueRequest(key="cfg", value="c1"))
    fields = [rpb.TemplateField(key="auth", template="{{secret:kept}}")]
    resolve = rpb.ResolveTemplateRequest(fields=fields, tool="t")
    assert (await resolver.ResolveTemplate(resolve)).fields[0].value == VALUE
    await vault.runtime.audit.flush()
    before = await state(vault)

    for statement in BREAK_AUDIT:
        await vault.sql(statement)
    unavailable = grpc.StatusCode.UNAVAILABLE

    # Mutations: refused, and nothing changed (the audit row shares their transaction).
    mutations: list[Awaitable[Any]] = [
        admin.CreateSecret(spb.CreateSecretRequest(name="fresh", value=VALUE)),
        admin.UpdateSecret(spb.UpdateSecretRequest(name="kept", value="other", etag=kept.etag)),
        admin.UpdateSecret(spb.UpdateSecretRequest(name="kept", description="d")),
        admin.DeleteSecret(spb.DeleteSecretRequest(name="kept", etag=kept.etag)),
        configs.PutConfigValue(cpb.PutConfigValueRequest(key="cfg", value="c2")),
        configs.PutConfigValue(cpb.PutConfigValueRequest(key="cfg_new", value="c")),
        configs.DeleteConfigValue(cpb.DeleteConfigValueRequest(key="cfg")),
    ]
    for mutation in mutations:
        assert await fails(mutation, unavailable) == "AUDIT_UNAVAILABLE"
    assert await state(vault) == before

    # Reads, checks and listings are refused: none could be recorded.
    reads: list[Awaitable[Any]] = [
        viewer.GetSecret(spb.GetSecretRequest(name="kept")),
        viewer.ListSecrets(spb.ListSecretsRequest()),
        viewer.GetVaultStats(spb.GetVaultStatsRequest()),
        cgrpc.ConfigServiceStub(vault.channel("viewer")).GetConfigValue(
            cpb.GetConfigValueRequest(key="cfg")
        ),
        configs.ListConfigValues(cpb.ListConfigValuesRequest()),
        resolver.CheckTemplate(rpb.CheckTemplateRequest(fields=fields)),
        audit.ListAuditEvents(apb.ListAuditEventsRequest()),
    ]
    for read in reads:
        assert await fails(read, unavailable) == "AUDIT_UNAVAILABLE"

    # Resolves too, at once: a reply leaves only after its event is committed, so not
    # one value is answered while the trail is broken.
    for _ in range(5):
        assert await fails(resolver.ResolveTemplate(resolve), unavailable) == "AUDIT_UNAVAILABLE"
    assert not vault.runtime.audit.healthy
    # Unauthenticated refusals are only counted (one event per peer and minute, later).
    anonymous = sgrpc.SecretServiceStub(vault.channel(None))
    await fails(anonymous.ListSecrets(spb.ListSecretsRequest()), grpc.StatusCode.UNAUTHENTICATED)

    for statement in REPAIR_AUDIT:
        await vault.sql(statement)
    deadline = time.monotonic() + 15
    while True:
        try:
            reply = await resolver.ResolveTemplate(resolve, timeout=10)
            break
        except grpc.aio.AioRpcError as err:
            assert err.code() == unavailable
            assert time.monotonic() < deadline, "resolves did not recover"
            await asyncio.sleep(0.1)
    assert reply.fields[0].value == VALUE
    assert vault.runtime.audit.healthy
    await admin.CreateSecret(spb.CreateSecretRequest(name="fresh", value=VALUE))
    await viewer.GetSecret(spb.GetSecretRequest(name="kept"))

    # Exactly the resolves that were answered have events: the first and the last.
    await vault.runtime.audit.flush()
    ok_resolves = await vault.sql(
        "SELECT count(*) AS n FROM audit_events WHERE method LIKE '%/ResolveTemplate' "
        "AND outcome = 'OK'"
    )
    assert ok_resolves[0]["n"] == 2
    refusals = await vault.sql("SELECT count FROM audit_events WHERE method = 'UNAUTHENTICATED'")
    assert [r["count"] for r in refusals] == [1]
    rows = await vault.sql("SELECT * FROM audit_events")
    assert VALUE not in repr([dict(r) for r in rows])


async def test_a_violated_constraint_fails_closed_too(vault: VaultHandle) -> None:
    admin = sgrpc.SecretServiceStub(vault.channel("admin"))
    await vault.sql("ALTER TABLE audit_events ADD CONSTRAINT audit_frozen CHECK (false) NOT VALID")
    await fails(
        admin.CreateSecret(spb.CreateSecretRequest(name="fresh", value=VALUE)),
        grpc.StatusCode.UNAVAILABLE,
    )
    assert await vault.sql("SELECT 1 FROM secrets") == []
    await vault.sql("ALTER TABLE audit_events DROP CONSTRAINT audit_frozen")
    await admin.CreateSecret(spb.CreateSecretRequest(name="fresh", value=VALUE))
    assert len(await vault.sql("SELECT 1 FROM secrets")) == 1


async def test_listing_is_newest_first_and_a_resolve_is_committed_before_its_reply(
    make_vault: Any,
) -> None:
    """The list is newest first by when things happened, paged by a (time, id) cursor."""
    vault = await make_vault()
    admin_channel = vault.channel("admin")
    secrets = sgrpc.SecretServiceStub(admin_channel)
    await secrets.CreateSecret(spb.CreateSecretRequest(name="ordered", value="v"))
    resolver = rgrpc.ResolverServiceStub(vault.channel("resolver"))
    await resolver.ResolveTemplate(
        rpb.ResolveTemplateRequest(
            fields=[rpb.TemplateField(key="k", template="{{secret:ordered}}")], tool="late"
        )
    )
    # Committed before the reply: already there, before anything later.
    ids = await vault.sql("SELECT id, method FROM audit_events ORDER BY id")
    assert ids[-1]["method"].endswith("ResolveTemplate")
    await secrets.GetVaultStats(spb.GetVaultStatsRequest())

    audit = agrpc.AuditServiceStub(admin_channel)
    methods: list[str] = []
    token = ""
    while True:  # page size 1 exercises the (time, id) cursor too
        page = await audit.ListAuditEvents(
            apb.ListAuditEventsRequest(page_size=1, page_token=token)
        )
        methods += [e.method.rsplit("/", 1)[1] for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert methods[:3] == ["GetVaultStats", "ResolveTemplate", "CreateSecret"], methods
