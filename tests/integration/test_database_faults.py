"""A frozen, read-only or full Postgres (a real one this test owns): every wait is bounded,
a known-down database is refused in milliseconds, errors say what happened, and nothing
acknowledged is lost or half-written."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from interakt.vault.v1 import config_service_pb2 as cpb
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import secret_service_pb2 as pb

from tests.support.faults import (
    fill_tablespace,
    free_tablespace,
    frozen,
    set_read_only,
    tiny_tablespace,
)
from tests.support.rpc import configs_admin, error_info, resolver, secrets_admin
from tests.support.vault import LogCapture, VaultFactory, VaultHandle, create_database
from vaultsvc.config import DatabaseSettings
from vaultsvc.storage.breaker import BreakerState
from vaultsvc.storage.embedded import EmbeddedPostgres

BOUND = 2.0  # database.operation_timeout for these vaults
SLACK = 1.0
RESOLVE = rpb.ResolveTemplateRequest(
    fields=[
        rpb.TemplateField(key="h", template="Bearer {{secret:k}}", encoding=rpb.ENCODING_HEADER)
    ]
)


async def _vault(pg: EmbeddedPostgres, make_vault: VaultFactory) -> VaultHandle:
    url = await create_database(pg)
    return await make_vault(
        database_url=url,
        database=DatabaseSettings(
            url=url,
            connect_timeout=1,
            acquire_timeout=1,
            command_timeout=10,  # the old default: on its own it let calls wait 10-30 s
            statement_timeout_ms=5000,
            operation_timeout=BOUND,
            breaker_failures=3,
            breaker_probe_interval=0.2,
        ),
    )


async def _outcome(call: Any) -> tuple[str, str, float]:
    """(code name, ErrorInfo reason or "", seconds) of one call."""
    started = time.monotonic()
    try:
        await call
    except grpc.aio.AioRpcError as err:
        reason = error_info(err).reason if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED else ""
        return err.code().name, reason, time.monotonic() - started
    return "OK", "", time.monotonic() - started


async def test_frozen_postgres_is_bounded_then_refused_fast_then_recovers(
    private_pg: EmbeddedPostgres, make_vault: VaultFactory
) -> None:
    vault = await _vault(private_pg, make_vault)
    secrets, resolve = secrets_admin(vault), resolver(vault)
    await secrets.CreateSecret(pb.CreateSecretRequest(name="k", value="value-1"))
    assert (await resolve.ResolveTemplate(RESOLVE)).fields[0].value == "Bearer value-1"
    breaker = vault.runtime.db.breaker

    with frozen(private_pg):
        # A deadline shorter than the bound: the call ends at its deadline, not later.
        code, _, took = await _outcome(secrets.GetSecret(pb.GetSecretRequest(name="k"), timeout=1))
        assert code == "DEADLINE_EXCEEDED" and took < 1 + SLACK, (code, took)

        # No deadline at all: the configured bound, not 10-30 s.
        for call in (
            secrets.GetSecret(pb.GetSecretRequest(name="k"), timeout=60),
            secrets.CreateSecret(pb.CreateSecretRequest(name="k2", value="v"), timeout=60),
            resolve.ResolveTemplate(RESOLVE, timeout=60),
        ):
            code, reason, took = await _outcome(call)
            assert took < BOUND + SLACK, (code, reason, took)
            # A resolve served from the cache needs no query, only its audit commit: that is
            # what the frozen database refuses (until the breaker opens, below).
            assert code == "UNAVAILABLE", (code, reason)
            assert reason in ("DATABASE_UNAVAILABLE", "AUDIT_UNAVAILABLE"), (code, reason)

        # A deadline longer than the bound: the bound.
        code, reason, took = await _outcome(
            secrets.ListSecrets(pb.ListSecretsRequest(), timeout=10)
        )
        assert (code, reason) == ("UNAVAILABLE", "DATABASE_UNAVAILABLE") and took < BOUND + SLACK

        # Known down: refused at once, without waiting on the database.
        for _ in range(50):
            if breaker.is_open():
                break
            await asyncio.sleep(0.1)
        assert breaker.is_open()
        assert breaker.state in (BreakerState.OPEN, BreakerState.HALF_OPEN)
        for call in [
            secrets.GetSecret(pb.GetSecretRequest(name="k"), timeout=30),
            secrets.CreateSecret(pb.CreateSecretRequest(name="k3", value="v"), timeout=30),
            resolve.ResolveTemplate(RESOLVE, timeout=30),
        ] * 5:
            code, reason, took = await _outcome(call)
            assert (code, reason) == ("UNAVAILABLE", "DATABASE_UNAVAILABLE"), (code, reason)
            assert took < 0.2, took

    # SIGCONT: the vault notices by itself (background probe), no restart.
    started = time.monotonic()
    while True:
        code, reason, _ = await _outcome(
            secrets.GetSecret(pb.GetSecretRequest(name="k"), timeout=5)
        )
        if code == "OK":
            break
        assert (code, reason) == ("UNAVAILABLE", "DATABASE_UNAVAILABLE"), (code, reason)
        assert time.monotonic() - started < 10, "the vault did not recover after SIGCONT"
        await asyncio.sleep(0.1)
    assert breaker.state is BreakerState.CLOSED
    assert (await resolve.ResolveTemplate(RESOLVE)).fields[0].value == "Bearer value-1"
    assert (await secrets.CreateSecret(pb.CreateSecretRequest(name="after", value="v"))).name


async def _state(vault: VaultHandle) -> tuple[Any, ...]:
    secrets = await vault.sql(
        "SELECT s.name, s.etag, s.current_version, s.delete_time, v.version, v.ciphertext "
        "FROM secrets s LEFT JOIN secret_versions v ON v.secret_id = s.id ORDER BY 1, 5"
    )
    configs = await vault.sql("SELECT key, value FROM config_values ORDER BY 1")
    total = await vault.sql("SELECT total_secrets FROM vault_state")
    return tuple(map(tuple, secrets)), tuple(map(tuple, configs)), total[0][0]


async def _resolve_events(vault: VaultHandle) -> int:
    rows = await vault.sql(
        "SELECT count(*) FROM audit_events WHERE method LIKE '%ResolveTemplate' AND outcome = 'OK'"
    )
    return int(rows[0][0])


async def test_read_only_database_says_so_and_writes_nothing(
    private_pg: EmbeddedPostgres, make_vault: VaultFactory, log_capture: LogCapture
) -> None:
    logged_from = log_capture.mark()
    vault = await _vault(private_pg, make_vault)
    secrets, configs, resolve = secrets_admin(vault), configs_admin(vault), resolver(vault)
    kept = await secrets.CreateSecret(pb.CreateSecretRequest(name="k", value="value-1"))
    await configs.PutConfigValue(cpb.PutConfigValueRequest(key="cfg", value="c1"))
    answered = 0
    await resolve.ResolveTemplate(RESOLVE)
    answered += 1
    await vault.runtime.audit.flush()
    before = await _state(vault)

    await set_read_only(private_pg, True)
    try:
        for call in (
            secrets.CreateSecret(pb.CreateSecretRequest(name="fresh", value="v")),
            secrets.UpdateSecret(pb.UpdateSecretRequest(name="k", value="v2", etag=kept.etag)),
            secrets.DeleteSecret(pb.DeleteSecretRequest(name="k")),
            configs.PutConfigValue(cpb.PutConfigValueRequest(key="cfg", value="c2")),
            configs.DeleteConfigValue(cpb.DeleteConfigValueRequest(key="cfg")),
            # A read whose audit event cannot be written fails closed, saying why.
            secrets.GetSecret(pb.GetSecretRequest(name="k")),
        ):
            code, reason, _ = await _outcome(call)
            assert (code, reason) == ("UNAVAILABLE", "DATABASE_READ_ONLY"), (code, reason)
        # Resolves are refused once the buffered events cannot be flushed.
        for _ in range(100):
            code, reason, _ = await _outcome(resolve.ResolveTemplate(RESOLVE, timeout=5))
            if code != "OK":
                break
            answered += 1
            await asyncio.sleep(0.05)
        assert (code, reason) == ("UNAVAILABLE", "DATABASE_READ_ONLY"), (code, reason)
        assert not vault.runtime.db.breaker.is_open()  # reachable: not "down"
        assert await _state(vault) == before
    finally:
        await set_read_only(private_pg, False)

    logs = log_capture.text(logged_from)
    assert '"sqlstate": "25006"' in logs and '"sqlstate_class": "invalid_transaction_state"' in logs
    assert "read-only transaction" not in logs  # Postgres's own message is never logged

    # Writable again: the vault recovers by itself and every answered resolve is audited.
    for _ in range(100):
        code, _, _ = await _outcome(
            secrets.CreateSecret(pb.CreateSecretRequest(name="fresh", value="v"))
        )
        if code == "OK":
            break
        await asyncio.sleep(0.1)
    assert code == "OK"
    await vault.runtime.audit.flush()
    assert await _resolve_events(vault) == answered


async def test_full_disk_is_storage_full_and_nothing_half_written(
    private_pg: EmbeddedPostgres, make_vault: VaultFactory, log_capture: LogCapture
) -> None:
    logged_from = log_capture.mark()
    vault = await _vault(private_pg, make_vault)
    secrets, resolve = secrets_admin(vault), resolver(vault)
    await secrets.CreateSecret(pb.CreateSecretRequest(name="k", value="value-1"))
    await resolve.ResolveTemplate(RESOLVE)
    await vault.runtime.audit.flush()
    big = "v" * 60_000
    acknowledged = ["k"]
    async with tiny_tablespace(private_pg, vault.database_url) as tablespace:
        await fill_tablespace(vault.database_url, tablespace)
        seen: dict[tuple[str, str], int] = {}
        refused: list[str] = []
        for i in range(40):
            name = f"big{i}"
            code, reason, _ = await _outcome(
                secrets.CreateSecret(pb.CreateSecretRequest(name=name, value=big))
            )
            seen[(code, reason)] = seen.get((code, reason), 0) + 1
            if code == "OK":
                acknowledged.append(name)
            else:
                refused.append(name)
        assert set(seen) <= {("OK", ""), ("RESOURCE_EXHAUSTED", "STORAGE_FULL")}, seen
        assert seen.get(("RESOURCE_EXHAUSTED", "STORAGE_FULL"), 0) >= 30, seen

        # Reads keep failing closed once their audit events cannot be stored.
        for _ in range(500):
            code, reason, _ = await _outcome(secrets.GetSecret(pb.GetSecretRequest(name="k")))
            if code != "OK":
                break
        assert (code, reason) == ("RESOURCE_EXHAUSTED", "STORAGE_FULL"), (code, reason)
        assert not vault.runtime.db.breaker.is_open()

        # Nothing half-written: refused secrets absent, counter and audit agree.
        names = {r[0] for r in await vault.sql("SELECT name FROM secrets")}
        assert names == set(acknowledged)
        assert (await vault.sql("SELECT total_secrets FROM vault_state"))[0][0] == len(names)
        audited = await vault.sql(
            "SELECT count(*) FROM audit_events WHERE method LIKE '%CreateSecret' AND outcome = 'OK'"
        )
        assert audited[0][0] == len(acknowledged)
        await free_tablespace(vault.database_url)
        created = await secrets.CreateSecret(pb.CreateSecretRequest(name="after", value=big))
        assert created.name == "after"

    logs = log_capture.text(logged_from)
    assert '"sqlstate": "53100"' in logs and '"sqlstate_class": "insufficient_resources"' in logs
    assert "No space left" not in logs
