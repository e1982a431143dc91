"""Usage tracking and the delete guard (issue 10 items 1-2), against a real server over a
real channel on embedded Postgres: counts and tools, across replicas and a restart and a
``kill -9``; ListSecrets ordering and filters; the guard refusing, then ``force``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2
from interakt.vault.v1 import audit_service_pb2 as apb
from interakt.vault.v1 import config_service_pb2 as cpb
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import resolver_service_pb2_grpc as rpbg
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as spbg

from tests.faults.audit_durability import vault_kill
from tests.support.cli import cli_env, start_serve
from tests.support.resolve import RAW, URL, put_configs, put_secrets, request, resolve
from tests.support.rpc import audit_admin, configs_admin, expect_error, resolver, secrets_admin
from tests.support.vault import VaultFactory, VaultHandle, create_database, sql
from vaultsvc.auth import hash_token, new_token
from vaultsvc.crypto import generate_master_key
from vaultsvc.storage.embedded import EmbeddedPostgres

FAILED = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def ts(moment: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(moment)
    return out


async def get(vault: VaultHandle, name: str) -> spb.Secret:
    return await secrets_admin(vault).GetSecret(spb.GetSecretRequest(name=name))


async def names(vault: VaultHandle, **request: object) -> list[str]:
    """Every page of ListSecrets (page size 1, so each token is used) as names."""
    admin = secrets_admin(vault)
    out: list[str] = []
    token = ""
    while True:
        page = await admin.ListSecrets(
            spb.ListSecretsRequest(page_size=1, page_token=token, **request)  # type: ignore[arg-type]
        )
        out += [s.name for s in page.secrets]
        token = page.next_page_token
        if not token:
            return out


async def test_usage_counts_each_successful_resolve_per_item_and_tool(vault: VaultHandle) -> None:
    await put_secrets(vault, {"orders_key": "ORDERS-V", "stripe_key": "STRIPE-V", "idle": "I"})
    await put_configs(vault, {"orders_host": "api.example.com"})
    stub = resolver(vault)
    both = [("u", "https://{{config:orders_host}}/{{secret:orders_key}}", URL)]
    for _ in range(3):
        await resolve(stub, both, tool="payments")
    # Named twice in one resolve: one use.
    await resolve(stub, [("a", "{{secret:orders_key}}{{secret:ORDERS_KEY}}", RAW)], tool="batch")
    await resolve(stub, [("s", "{{secret:stripe_key}}", RAW)], tool="")
    # A failed resolve is no use.
    await expect_error(
        stub.ResolveTemplate(request([("x", "{{secret:orders_key}}{{secret:missing}}", RAW)])),
        grpc.StatusCode.NOT_FOUND,
    )

    orders = await get(vault, "orders_key")
    assert orders.usage.resolve_count == 4
    assert [(t.tool, t.resolve_count) for t in orders.usage.tools] == [
        ("batch", 1),
        ("payments", 3),
    ]
    assert orders.usage.last_resolve_time == orders.usage.tools[0].last_resolve_time
    stripe = await get(vault, "stripe_key")
    assert stripe.usage.resolve_count == 1 and list(stripe.usage.tools) == []
    idle = (await get(vault, "idle")).usage
    assert idle.resolve_count == 0 and not idle.HasField("last_resolve_time") and not idle.tools
    config = await configs_admin(vault).GetConfigValue(cpb.GetConfigValueRequest(key="orders_host"))
    assert config.usage.resolve_count == 3
    assert [t.tool for t in config.usage.tools] == ["payments"]
    listed = await configs_admin(vault).ListConfigValues(cpb.ListConfigValuesRequest())
    assert listed.config_values[0].usage == config.usage
    # Listed with the same usage as read one by one.
    page = await secrets_admin(vault).ListSecrets(spb.ListSecretsRequest())
    assert {s.name: s.usage for s in page.secrets}["orders_key"] == orders.usage


async def test_only_the_20_most_recent_tools_are_kept(vault: VaultHandle) -> None:
    await put_secrets(vault, {"shared": "S"})
    stub = resolver(vault)
    for i in range(23):
        await resolve(stub, [("f", "{{secret:shared}}", RAW)], tool=f"tool-{i:02d}")
    usage = (await get(vault, "shared")).usage
    assert usage.resolve_count == 23
    assert [t.tool for t in usage.tools] == [f"tool-{i:02d}" for i in range(22, 2, -1)]
    rows = await vault.sql("SELECT count(*) AS n FROM secret_tool_usage")
    assert rows[0]["n"] == 20


async def test_list_secrets_orders_and_filters_by_usage(vault: VaultHandle) -> None:
    await put_secrets(vault, {"b_old": "1", "a_new": "2", "c_never": "3", "d_never": "4"})
    stub = resolver(vault)
    await resolve(stub, [("f", "{{secret:b_old}}", RAW)])
    between = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await resolve(stub, [("f", "{{secret:a_new}}", RAW)])

    assert await names(vault) == ["a_new", "b_old", "c_never", "d_never"]
    assert await names(vault, order_by="name") == ["a_new", "b_old", "c_never", "d_never"]
    assert await names(vault, order_by="last_resolve_time") == [
        "a_new",
        "b_old",
        "c_never",
        "d_never",
    ]
    assert await names(vault, order_by="create_time") == ["d_never", "c_never", "a_new", "b_old"]
    await secrets_admin(vault).UpdateSecret(spb.UpdateSecretRequest(name="c_never", value="x"))
    assert (await names(vault, order_by="update_time"))[0] == "c_never"
    assert await names(vault, never_resolved=True) == ["c_never", "d_never"]
    assert await names(vault, unused_since=ts(between)) == ["b_old", "c_never", "d_never"]
    assert await names(vault, unused_since=ts(between - timedelta(days=1))) == [
        "c_never",
        "d_never",
    ]
    assert await names(vault, order_by="last_resolve_time", unused_since=ts(datetime.now(UTC))) == [
        "a_new",
        "b_old",
        "c_never",
        "d_never",
    ]
    filtered = await secrets_admin(vault).ListSecrets(
        spb.ListSecretsRequest(never_resolved=True, name_contains="c_")
    )
    assert filtered.total_size == 1

    # Tokens are bound to the ordering and the filters.
    admin = secrets_admin(vault)
    first = await admin.ListSecrets(
        spb.ListSecretsRequest(page_size=1, order_by="last_resolve_time")
    )
    for other in (
        spb.ListSecretsRequest(page_token=first.next_page_token),
        spb.ListSecretsRequest(page_token=first.next_page_token, order_by="create_time"),
        spb.ListSecretsRequest(
            page_token=first.next_page_token, order_by="last_resolve_time", never_resolved=True
        ),
    ):
        await expect_error(admin.ListSecrets(other), INVALID, "INVALID_PAGE_TOKEN")
    message, info = await expect_error(
        admin.ListSecrets(spb.ListSecretsRequest(order_by="last_used")), INVALID, "INVALID_FILTER"
    )
    assert "last_resolve_time" in message and info.metadata["field"] == "order_by"
    await expect_error(
        admin.ListSecrets(spb.ListSecretsRequest(order_by="name DESC")), INVALID, "INVALID_FILTER"
    )
    await expect_error(
        admin.ListSecrets(
            spb.ListSecretsRequest(unused_since=timestamp_pb2.Timestamp(seconds=2**62))
        ),
        INVALID,
        "INVALID_FILTER",
    )


async def _events(vault: VaultHandle, method: str) -> list[apb.AuditEvent]:
    response = await audit_admin(vault).ListAuditEvents(apb.ListAuditEventsRequest(page_size=100))
    return [e for e in response.events if e.method.endswith("/" + method)]


async def test_delete_guard_refuses_a_secret_in_use_then_force_deletes(
    vault: VaultHandle,
) -> None:
    await put_secrets(vault, {"stripe_key": "STRIPE-GUARDED-VALUE", "unused": "U"})
    stub = resolver(vault)
    await resolve(stub, [("f", "{{secret:stripe_key}}", RAW)], tool="payments")
    await resolve(stub, [("f", "{{secret:stripe_key}}", RAW)], tool="invoices")
    last = (await get(vault, "stripe_key")).usage.last_resolve_time
    admin = secrets_admin(vault)

    message, info = await expect_error(
        admin.DeleteSecret(spb.DeleteSecretRequest(name="stripe_key")), FAILED, "SECRET_IN_USE"
    )
    stamp = last.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    assert info.metadata["tools"] == "invoices,payments"
    assert info.metadata["last_resolve_time"] == stamp
    assert "invoices, payments" in message and stamp in message and "force" in message
    assert "STRIPE-GUARDED-VALUE" not in message
    assert (await get(vault, "stripe_key")).name == "stripe_key"  # still there
    refused = (await _events(vault, "DeleteSecret"))[0]
    assert refused.outcome == "FAILED_PRECONDITION" and not refused.forced

    # Never resolved: no guard, no force needed; the event is not marked forced.
    await admin.DeleteSecret(spb.DeleteSecretRequest(name="unused"))
    assert not (await _events(vault, "DeleteSecret"))[0].forced

    await admin.DeleteSecret(spb.DeleteSecretRequest(name="stripe_key", force=True))
    forced = (await _events(vault, "DeleteSecret"))[0]
    assert forced.outcome == "OK" and forced.forced and forced.secret_names == ["stripe_key"]
    await expect_error(get(vault, "stripe_key"), grpc.StatusCode.NOT_FOUND, "SECRET_DELETED")

    # Restored, it keeps its usage; purging a scheduled secret is not guarded again.
    restored = await admin.RestoreSecret(spb.RestoreSecretRequest(name="stripe_key"))
    assert restored.name == "stripe_key"
    assert (await get(vault, "stripe_key")).usage.resolve_count == 2
    await admin.DeleteSecret(spb.DeleteSecretRequest(name="stripe_key", force=True, purge=True))
    assert await vault.sql("SELECT * FROM secret_usage WHERE resolve_count > 0") == []
    assert await vault.sql("SELECT * FROM secret_tool_usage") == []


async def test_delete_guard_for_config_values_and_the_window(make_vault: VaultFactory) -> None:
    vault = await make_vault()
    await put_configs(vault, {"orders_host": "api.example.com"})
    await resolve(resolver(vault), [("f", "{{config:orders_host}}", RAW)], tool="orders-sync")
    configs = configs_admin(vault)
    message, info = await expect_error(
        configs.DeleteConfigValue(cpb.DeleteConfigValueRequest(key="ORDERS_HOST")),
        FAILED,
        "CONFIG_IN_USE",
    )
    assert info.metadata["tools"] == "orders-sync" and "orders_host" in message
    # Out of the window (moved back in the database): not in use any more.
    await vault.sql("UPDATE config_usage SET last_resolve_time = now() - interval '8 days'")
    await configs.DeleteConfigValue(cpb.DeleteConfigValueRequest(key="orders_host"))
    assert not (await _events(vault, "DeleteConfigValue"))[0].forced
    # Recreated under the same key: fresh usage.
    await put_configs(vault, {"orders_host": "api.example.com"})
    fresh = await configs.GetConfigValue(cpb.GetConfigValueRequest(key="orders_host"))
    assert fresh.HasField("usage") and fresh.usage.resolve_count == 0
    await resolve(resolver(vault), [("f", "{{config:orders_host}}", RAW)], tool="orders-sync")
    await configs.DeleteConfigValue(cpb.DeleteConfigValueRequest(key="orders_host", force=True))
    assert (await _events(vault, "DeleteConfigValue"))[0].forced

    # delete_guard_days = 0 turns the guard off.
    off = await make_vault(delete_guard_days=0)
    await put_secrets(off, {"k": "v"})
    await resolve(resolver(off), [("f", "{{secret:k}}", RAW)], tool="t")
    await secrets_admin(off).DeleteSecret(spb.DeleteSecretRequest(name="k"))
    assert not (await _events(off, "DeleteSecret"))[0].forced


async def test_usage_adds_up_across_replicas_and_survives_a_restart(
    make_vault: VaultFactory,
) -> None:
    first = await make_vault()
    second = await make_vault(
        database_url=first.database_url, master_keys=first.master_keys, tokens=first.tokens
    )
    await put_secrets(first, {"shared": "SHARED-V"})
    await put_configs(first, {"region": "eu"})
    fields = [("f", "{{secret:shared}}/{{config:region}}", RAW)]

    async def burst(vault: VaultHandle, tool: str, n: int) -> None:
        stub = resolver(vault)
        await asyncio.gather(*(resolve(stub, fields, tool=tool) for _ in range(n)))

    await asyncio.gather(
        burst(first, "a", 40), burst(second, "b", 40), burst(first, "b", 20), burst(second, "a", 5)
    )
    for vault in (first, second):
        usage = (await get(vault, "shared")).usage
        assert usage.resolve_count == 105
        assert {t.tool: t.resolve_count for t in usage.tools} == {"a": 45, "b": 60}
    database_url, master_keys, tokens = first.database_url, first.master_keys, first.tokens
    await first.close()
    await second.close()
    again = await make_vault(database_url=database_url, master_keys=master_keys, tokens=tokens)
    assert (await get(again, "shared")).usage.resolve_count == 105
    config = await configs_admin(again).GetConfigValue(cpb.GetConfigValueRequest(key="region"))
    assert config.usage.resolve_count == 105
    await burst(again, "c", 3)
    assert (await get(again, "shared")).usage.resolve_count == 108


async def test_vault_kill_9_loses_no_answered_use(
    private_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Every resolve a client saw succeed is counted: usage is written in the statement
    that writes the event, so it is exactly the OK resolve events that survived."""
    outcome = await vault_kill(private_pg, tmp_path, seconds=1.5)
    assert len(outcome.ok_request_ids) > 50, outcome.seen()
    assert outcome.lost == []
    assert outcome.counted == outcome.ok_events >= len(outcome.ok_request_ids)


async def test_concurrent_batches_on_replicas_prune_tools_without_deadlock(
    make_vault: VaultFactory,
) -> None:
    """Two replicas, each resolving three secrets (in different orders) under 30 tools at
    once: every use counted, exactly the 20 most recent tools kept, no deadlock."""
    first = await make_vault()
    second = await make_vault(
        database_url=first.database_url, master_keys=first.master_keys, tokens=first.tokens
    )
    await put_secrets(first, {"s1": "1", "s2": "2", "s3": "3"})
    forward = [("f", "{{secret:s1}}{{secret:s2}}{{secret:s3}}", RAW)]
    backward = [("f", "{{secret:s3}}{{secret:s2}}{{secret:s1}}", RAW)]

    async def burst(vault: VaultHandle, fields: list[tuple[str, str, int]], prefix: str) -> None:
        stub = resolver(vault)
        await asyncio.gather(*(resolve(stub, fields, tool=f"{prefix}-{i:02d}") for i in range(30)))

    await asyncio.gather(burst(first, forward, "a"), burst(second, backward, "b"))
    for name in ("s1", "s2", "s3"):
        usage = (await get(first, name)).usage
        assert usage.resolve_count == 60
        assert len(usage.tools) == 20 and all(t.resolve_count == 1 for t in usage.tools)
        times = [t.last_resolve_time.ToDatetime() for t in usage.tools]
        assert times == sorted(times, reverse=True)
    rows = await first.sql(
        "SELECT secret_id, count(*) AS n FROM secret_tool_usage GROUP BY secret_id"
    )
    assert sorted(r["n"] for r in rows) == [20, 20, 20]


async def test_usage_adds_up_across_worker_processes_and_a_restart(
    pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    """``serve --workers 2``: resolves over many connections land on both workers; the
    counts add up in Postgres and are still there after the whole server restarts."""
    key_id, key = generate_master_key()
    admin, tool = new_token(), new_token()
    principals = (("ops", "admin", admin), ("x", "resolver", tool))
    tokens = ",".join(f"{p}:{role}:{hash_token(t).hex()}" for p, role, t in principals)
    url = await create_database(pg)
    env = cli_env(url, f"{key_id}:{key}", VAULT_TOKENS=tokens, VAULT_WORKERS="2")

    async def resolves(address: str, connections: int, each: int) -> None:
        request = rpb.ResolveTemplateRequest(
            fields=[rpb.TemplateField(key="k", template="{{secret:shared}}")], tool="workers"
        )

        async def one_connection() -> None:
            # Its own connection (grpc would share one between channels): spread over workers.
            async with grpc.aio.insecure_channel(
                address, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                stub = rpbg.ResolverServiceStub(channel)
                for _ in range(each):
                    reply = await stub.ResolveTemplate(
                        request, metadata=[("authorization", f"Bearer {tool}")], timeout=10
                    )
                    assert reply.fields[0].value == "S"

        await asyncio.gather(*(one_connection() for _ in range(connections)))

    async def usage(address: str) -> spb.Secret:
        async with grpc.aio.insecure_channel(address) as channel:
            return await spbg.SecretServiceStub(channel).GetSecret(
                spb.GetSecretRequest(name="shared"),
                metadata=[("authorization", f"Bearer {admin}")],
                timeout=10,
            )

    serve = await start_serve(env, tmp_path / "workers-1.log")
    try:
        async with grpc.aio.insecure_channel(serve.address) as channel:
            await spbg.SecretServiceStub(channel).CreateSecret(
                spb.CreateSecretRequest(name="shared", value="S"),
                metadata=[("authorization", f"Bearer {admin}")],
                timeout=10,
            )
        await resolves(serve.address, connections=16, each=3)
        assert serve.stderr().count("worker listening") == 2
        # Both workers committed audit batches (each has its own audit connection, opened
        # at its first batch): the count below adds up uses from two processes.
        writers = await sql(
            url,
            "SELECT count(*) AS n FROM pg_stat_activity "
            "WHERE application_name = 'vaultsvc-audit' AND datname = current_database()",
        )
        assert writers[0]["n"] == 2
        first = (await usage(serve.address)).usage
        assert first.resolve_count == 48
        assert [(t.tool, t.resolve_count) for t in first.tools] == [("workers", 48)]
    finally:
        assert await serve.stop() == 0
    again = await start_serve(env, tmp_path / "workers-2.log")
    try:
        assert (await usage(again.address)).usage == first
        await resolves(again.address, connections=2, each=1)
        assert (await usage(again.address)).usage.resolve_count == 50
    finally:
        assert await again.stop() == 0
