"""Group-committed audit against a real server and real Postgres: replies only after their
event is committed, concurrent calls share an INSERT, stalled audit fails fast, floods are
bounded and limited, unauthenticated refusals aggregated, request ids server-assigned."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from interakt.vault.v1 import audit_service_pb2 as apb
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rgrpc
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as sgrpc

from tests.support.rpc import audit_admin, error_info, expect_error, resolver, secrets_admin
from tests.support.vault import VaultFactory, VaultHandle
from vaultsvc.auth import new_token
from vaultsvc.storage.audit_store import AuditStore

VALUE = "group-commit-value-77a1"
RESOLVE = "/interakt.vault.v1.ResolverService/ResolveTemplate"


def request(template: str, tool: str = "gc") -> rpb.ResolveTemplateRequest:
    return rpb.ResolveTemplateRequest(
        fields=[rpb.TemplateField(key="f", template=template, encoding=rpb.ENCODING_RAW)],
        tool=tool,
    )


async def reply_ids(call: grpc.aio.UnaryUnaryCall) -> dict[str, str]:  # type: ignore[type-arg]
    return {str(k): str(v) for k, v in await call.trailing_metadata() or ()}


def statements(vault: VaultHandle) -> int:
    store = vault.runtime.audit.sink
    assert isinstance(store, AuditStore)
    return store.statements


async def test_each_reply_follows_its_commit_and_concurrent_resolves_share_inserts(
    vault: VaultHandle,
) -> None:
    await secrets_admin(vault).CreateSecret(spb.CreateSecretRequest(name="gc_key", value=VALUE))
    stub = resolver(vault)
    checker = await asyncpg.create_pool(vault.database_url, min_size=4, max_size=8)
    assert checker is not None
    calls = 64
    before = statements(vault)

    async def one() -> str:
        call = stub.ResolveTemplate(request("{{secret:gc_key}}"), timeout=20)
        assert (await call).fields[0].value == VALUE
        request_id = (await reply_ids(call))["x-request-id"]
        # Right after the reply, from another connection: the event is already there.
        async with checker.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT outcome, method FROM audit_events WHERE request_id = $1", request_id
            )
        assert row is not None, "a reply left before its audit event was committed"
        assert (row["outcome"], row["method"]) == ("OK", RESOLVE)
        return request_id

    try:
        ids = await asyncio.gather(*(one() for _ in range(calls)))
    finally:
        await checker.close()
    assert len(set(ids)) == calls
    inserted = statements(vault) - before
    transactions = await vault.sql(
        "SELECT count(DISTINCT xmin::text) AS n FROM audit_events WHERE request_id = ANY($1)",
        ids,
    )
    # Fewer INSERTs (the writer's count) and fewer transactions (Postgres' own record of
    # which rows were committed together) than resolves.
    assert 1 <= inserted < calls, inserted
    assert transactions[0]["n"] < calls, transactions[0]["n"]


async def test_a_stalled_audit_table_fails_resolves_fast_then_recovers(
    make_vault: VaultFactory,
) -> None:
    vault = await make_vault(audit_write_timeout=1.0, audit_stall_threshold=0.2)
    await secrets_admin(vault).CreateSecret(spb.CreateSecretRequest(name="gc_key", value=VALUE))
    stub = resolver(vault)
    wanted = request("{{secret:gc_key}}")
    assert (await stub.ResolveTemplate(wanted, timeout=10)).fields[0].value == VALUE

    deadline = 10.0
    locker = await asyncpg.connect(vault.database_url)
    transaction = locker.transaction()
    await transaction.start()
    await locker.execute("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
    try:

        async def one() -> tuple[str, str, float]:
            started = time.monotonic()
            try:
                await stub.ResolveTemplate(wanted, timeout=deadline)
            except grpc.aio.AioRpcError as err:
                reason = error_info(err).reason
                return err.code().name, reason, time.monotonic() - started
            return "OK", "", time.monotonic() - started

        results = list(await asyncio.gather(*(one() for _ in range(30))))
        # Arrivals while the audit is stuck are refused at once.
        await asyncio.sleep(0.3)
        results += await asyncio.gather(*(one() for _ in range(30)))
        for _ in range(5):
            results.append(await one())
    finally:
        await transaction.rollback()
        await locker.close()

    assert {(code, reason) for code, reason, _ in results} == {
        ("UNAVAILABLE", "AUDIT_UNAVAILABLE")
    }, results
    slowest = max(elapsed for _, _, elapsed in results)
    assert slowest < deadline / 3, slowest  # well under the deadline, never DEADLINE_EXCEEDED

    recovered_at = time.monotonic() + 15
    while True:
        try:
            reply = await stub.ResolveTemplate(wanted, timeout=deadline)
            break
        except grpc.aio.AioRpcError as err:
            assert error_info(err).reason == "AUDIT_UNAVAILABLE"
            assert time.monotonic() < recovered_at, "resolves did not recover"
            await asyncio.sleep(0.1)
    assert reply.fields[0].value == VALUE


async def test_floods_of_missing_names_are_bounded_and_limited_per_principal(
    make_vault: VaultFactory,
) -> None:
    other = new_token()
    vault = await make_vault(
        extra_tokens=(("tool-2", "resolver", other),),
        missing_names_rate=5.0,
        missing_names_burst=500,
    )
    await secrets_admin(vault).CreateSecret(spb.CreateSecretRequest(name="real_key", value=VALUE))
    made_up = [f"made_up_{i:04d}_" + "x" * 100 for i in range(999)]
    flood = request("{{secret:real_key}}" + "".join(f"{{{{secret:{n}}}}}" for n in made_up))
    first = resolver(vault)
    second = rgrpc.ResolverServiceStub(vault.channel(None, token=other))

    message, info = await expect_error(
        first.ResolveTemplate(flood, metadata=[("x-request-id", "flood-1")], timeout=20),
        grpc.StatusCode.NOT_FOUND,
        "SECRET_NOT_FOUND",
    )
    # The error lists the first names (at most 20 and 1024 characters of them), then the rest.
    listed = info.metadata["names"].split(",")
    assert 1 <= len(listed) - 1 <= 20 and listed[-1] == f"and {999 - (len(listed) - 1)} more"
    assert message.endswith(listed[-1]), message[-80:]

    # The second flood right after is refused for this principal, with RetryInfo.
    with_retry = first.ResolveTemplate(flood, metadata=[("x-request-id", "flood-2")], timeout=20)
    try:
        await with_retry
        raise AssertionError("the second flood was not limited")
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(err).reason == "RATE_LIMITED"
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert status.details[1].Unpack(retry)
        assert retry.retry_delay.ToNanoseconds() > 0

    # Never plain resolves, and never another principal.
    plain = request("{{secret:real_key}}")
    for _ in range(20):
        assert (await first.ResolveTemplate(plain, timeout=10)).fields[0].value == VALUE
    await expect_error(
        second.ResolveTemplate(flood, timeout=20), grpc.StatusCode.NOT_FOUND, "SECRET_NOT_FOUND"
    )

    rows = await vault.sql(
        "SELECT client_request_id, outcome, secret_names, missing_count FROM audit_events "
        "WHERE method = $1 ORDER BY id",
        RESOLVE,
    )
    kept = sorted(["real_key", *sorted(n.lower() for n in made_up)[:20]])
    by_client_id = {r["client_request_id"]: r for r in rows}
    for client_id, outcome in (("flood-1", "NOT_FOUND"), ("flood-2", "RESOURCE_EXHAUSTED")):
        row = by_client_id[client_id]
        assert row["outcome"] == outcome
        assert list(row["secret_names"]) == kept
        assert row["missing_count"] == 999
    assert max(len(r["secret_names"]) for r in rows) == 21
    assert [r["missing_count"] for r in rows if r["outcome"] == "OK"] == [0] * 20

    events = (await audit_admin(vault).ListAuditEvents(apb.ListAuditEventsRequest())).events
    flood_event = next(e for e in events if e.client_request_id == "flood-1")
    assert flood_event.missing_count == 999 and len(flood_event.secret_names) == 21


async def test_unauthenticated_refusals_are_one_event_per_peer_and_minute(
    vault: VaultHandle,
) -> None:
    bad = sgrpc.SecretServiceStub(vault.channel(None, token="vt_not_a_real_token"))
    anonymous = sgrpc.SecretServiceStub(vault.channel(None))
    refusals = 0
    for stub in (bad, anonymous):
        for _ in range(15):
            await expect_error(
                stub.ListSecrets(spb.ListSecretsRequest()), grpc.StatusCode.UNAUTHENTICATED
            )
            refusals += 1
    # Not one INSERT each: nothing is written until the minute is over (or a flush).
    assert await vault.sql("SELECT 1 FROM audit_events WHERE outcome = 'UNAUTHENTICATED'") == []
    await vault.runtime.audit.flush()
    rows = await vault.sql(
        "SELECT method, principal, peer, count, time FROM audit_events "
        "WHERE outcome = 'UNAUTHENTICATED'"
    )
    # Both channels come from one address (other ports): one event per minute, counted.
    assert {(r["method"], r["principal"], r["peer"]) for r in rows} == {
        ("UNAUTHENTICATED", "", "ipv4:127.0.0.1")
    }
    assert len({r["time"] for r in rows}) == len(rows) <= 2  # a minute may end mid-test
    assert sum(r["count"] for r in rows) == refusals
    events = (await audit_admin(vault).ListAuditEvents(apb.ListAuditEventsRequest())).events
    assert sum(e.count for e in events if e.method == "UNAUTHENTICATED") == refusals


async def test_request_ids_are_the_servers_and_the_clients_is_recorded_beside_it(
    vault: VaultHandle,
) -> None:
    viewer = sgrpc.SecretServiceStub(vault.channel("viewer"))
    seen: list[str] = []
    for _ in range(2):
        call = viewer.GetVaultStats(
            spb.GetVaultStatsRequest(), metadata=[("x-request-id", "client-abc")]
        )
        await call
        trailing = await reply_ids(call)
        assert trailing["x-request-id"] != "client-abc"
        assert len(trailing["x-request-id"]) == 32
        assert trailing["x-client-request-id"] == "client-abc"
        seen.append(trailing["x-request-id"])
    failing = viewer.GetSecret(spb.GetSecretRequest(name="nope"), metadata=[("x-request-id", "c2")])
    _, info = await expect_error(failing, grpc.StatusCode.NOT_FOUND)
    assert info.metadata["request_id"] != "c2"
    seen.append(info.metadata["request_id"])

    rows = await vault.sql(
        "SELECT request_id, client_request_id FROM audit_events WHERE request_id = ANY($1)", seen
    )
    assert sorted((r["request_id"], r["client_request_id"]) for r in rows) == sorted(
        zip(seen, ["client-abc", "client-abc", "c2"], strict=True)
    )
    events = (await audit_admin(vault).ListAuditEvents(apb.ListAuditEventsRequest())).events
    assert {e.request_id: e.client_request_id for e in events if e.request_id in seen} == dict(
        zip(seen, ["client-abc", "client-abc", "c2"], strict=True)
    )
