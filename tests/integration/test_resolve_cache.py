"""The sealed-row resolve cache against REAL Postgres and REAL grpc servers: hits without
database work, coherence across replicas through LISTEN/NOTIFY (including the race of a
read with a change), read-your-writes, listener loss and recovery, lost notifications."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import grpc
import pytest
from interakt.vault.v1 import config_service_pb2 as cpb
from interakt.vault.v1 import secret_service_pb2 as spb

from tests.support.cli import cli_env, run_cli
from tests.support.keys import keyring_spec, new_key
from tests.support.resolve import RAW, FetchSpy, StatementSpy, resolve
from tests.support.rpc import configs_admin, error_info, resolver, secrets_admin
from tests.support.vault import LogCapture, VaultFactory, VaultHandle
from vaultsvc.vault.cache import CONFIG_KIND, SECRET_KIND, SealedRowCache


def cache_of(vault: VaultHandle) -> SealedRowCache:
    return vault.runtime.vault.cache


async def value(vault: VaultHandle, template: str) -> str:
    return (await resolve(resolver(vault), [("f", template, RAW)]))[0][1]


async def reason_of(vault: VaultHandle, template: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await value(vault, template)
    return error_info(info.value).reason


async def replicas(make_vault: VaultFactory, count: int, **overrides: object) -> list[VaultHandle]:
    first = await make_vault(**overrides)
    return [first] + [
        await make_vault(
            database_url=first.database_url,
            master_keys=first.master_keys,
            tokens=first.tokens,
            **overrides,
        )
        for _ in range(count - 1)
    ]


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_warm_resolve_makes_no_database_round_trip(vault: VaultHandle) -> None:
    await secrets_admin(vault).CreateSecret(spb.CreateSecretRequest(name="api", value="k-1"))
    await configs_admin(vault).PutConfigValue(cpb.PutConfigValueRequest(key="host", value="h"))
    template = "https://{{config:host}}/?k={{secret:api}}"
    await vault.caught_up()  # no notification of these writes is still on its way
    assert await value(vault, template) == "https://h/?k=k-1"  # cold: one query, then kept
    cached = cache_of(vault).peek(SECRET_KIND, "api")
    assert cached is not None and b"k-1" not in cached.sealed.ciphertext  # sealed, not opened

    fetches, statements = FetchSpy(vault), StatementSpy(vault)
    for _ in range(5):
        assert await value(vault, template) == "https://h/?k=k-1"
    assert fetches.calls == 0
    assert statements.request_statements() == 0 and statements.acquisitions == 0

    # Made-up names: one query the first time, none after (the negative space).
    assert await reason_of(vault, "{{secret:nope}}{{secret:api}}") == "SECRET_NOT_FOUND"
    assert fetches.calls == 1
    assert await reason_of(vault, "{{secret:nope}}{{secret:api}}") == "SECRET_NOT_FOUND"
    assert await reason_of(vault, "{{config:nada}}") == "CONFIG_NOT_FOUND"
    assert await reason_of(vault, "{{config:nada}}") == "CONFIG_NOT_FOUND"
    assert fetches.calls == 2


async def test_the_cache_can_be_switched_off(make_vault: VaultFactory) -> None:
    vault = await make_vault(cache_enabled=False)
    assert vault.runtime.changes is None
    await secrets_admin(vault).CreateSecret(spb.CreateSecretRequest(name="api", value="k-1"))
    fetches = FetchSpy(vault)
    for _ in range(3):
        assert await value(vault, "{{secret:api}}") == "k-1"
    assert fetches.calls == 3 and len(cache_of(vault)) == 0


async def test_every_change_on_one_replica_is_seen_by_the_others(
    make_vault: VaultFactory,
) -> None:
    a, b, c = await replicas(make_vault, 3)
    admin, configs = secrets_admin(a), configs_admin(a)
    await admin.CreateSecret(spb.CreateSecretRequest(name="tok", value="one"))
    await configs.PutConfigValue(cpb.PutConfigValueRequest(key="host", value="h1"))
    template = "{{config:host}}/{{secret:tok}}"

    async def on_others(expected: str) -> None:
        for replica in (b, c):
            await replica.caught_up()
            assert await value(replica, template) == expected
            assert await value(replica, template) == expected  # and again, from memory

    # Both replicas hold everything (and "later" as missing) in their caches.
    await on_others("h1/one")
    for replica in (b, c):
        assert await reason_of(replica, "{{secret:later}}") == "SECRET_NOT_FOUND"
        assert cache_of(replica).is_negative(SECRET_KIND, "later")

    await admin.UpdateSecret(spb.UpdateSecretRequest(name="tok", value="two"))
    await on_others("h1/two")
    await configs.PutConfigValue(cpb.PutConfigValueRequest(key="host", value="h2"))
    await on_others("h2/two")

    await admin.CreateSecret(spb.CreateSecretRequest(name="later", value="now"))
    for replica in (b, c):
        await replica.caught_up()
        assert await value(replica, "{{secret:later}}") == "now"

    # Versions: a rollback is a new current version.
    rolled = await admin.RollbackSecret(spb.RollbackSecretRequest(name="tok", version=1))
    await on_others("h2/one")

    # Recoverable deletion: scheduled, restored, then deleted for good.
    await admin.DeleteSecret(spb.DeleteSecretRequest(name="tok", etag=rolled.etag, force=True))
    for replica in (b, c):
        await replica.caught_up()
        assert await reason_of(replica, template) == "SECRET_DELETED"
    await admin.RestoreSecret(spb.RestoreSecretRequest(name="tok"))
    await on_others("h2/one")
    await admin.DeleteSecret(spb.DeleteSecretRequest(name="tok", purge=True, force=True))
    for replica in (b, c):
        await replica.caught_up()
        assert await reason_of(replica, template) == "SECRET_NOT_FOUND"
    await configs.DeleteConfigValue(cpb.DeleteConfigValueRequest(key="host", force=True))
    for replica in (b, c):
        await replica.caught_up()
        assert cache_of(replica).peek(CONFIG_KIND, "host") is None
        assert await reason_of(replica, "{{config:host}}") == "CONFIG_NOT_FOUND"


async def test_a_rewrap_by_the_cli_reaches_every_replica_cache(make_vault: VaultFactory) -> None:
    old, new = new_key("old"), new_key("new")
    writer = await make_vault(master_keys=old.spec)
    await secrets_admin(writer).CreateSecret(spb.CreateSecretRequest(name="db", value="pw"))
    both = keyring_spec(new, old)
    b = await make_vault(database_url=writer.database_url, master_keys=both, tokens=writer.tokens)
    c = await make_vault(database_url=writer.database_url, master_keys=both, tokens=writer.tokens)
    for replica in (b, c):
        assert await value(replica, "{{secret:db}}") == "pw"
        cached = cache_of(replica).peek(SECRET_KIND, "db")
        assert cached is not None and cached.sealed.key_id == "old"

    done = await run_cli(["keys", "rewrap"], cli_env(writer.database_url, both))
    assert done.returncode == 0, done.stderr
    for replica in (b, c):
        await replica.caught_up()
        assert cache_of(replica).peek(SECRET_KIND, "db") is None
        assert await value(replica, "{{secret:db}}") == "pw"
        cached = cache_of(replica).peek(SECRET_KIND, "db")
        assert cached is not None and cached.sealed.key_id == "new"


async def test_the_replica_that_wrote_reads_its_write_without_waiting_for_notify(
    make_vault: VaultFactory,
) -> None:
    vault = await make_vault(cache_check_interval=60.0)
    admin = secrets_admin(vault)
    await admin.CreateSecret(spb.CreateSecretRequest(name="mine", value="v1"))
    assert await value(vault, "{{secret:mine}}") == "v1"
    assert await reason_of(vault, "{{secret:fresh}}") == "SECRET_NOT_FOUND"
    changes = vault.runtime.changes
    assert changes is not None
    changes.on_payload = lambda payload: None  # type: ignore[method-assign]  # deaf listener

    await admin.UpdateSecret(spb.UpdateSecretRequest(name="mine", value="v2"))
    assert await value(vault, "{{secret:mine}}") == "v2"
    await admin.CreateSecret(spb.CreateSecretRequest(name="fresh", value="f"))
    assert await value(vault, "{{secret:fresh}}") == "f"
    await configs_admin(vault).PutConfigValue(cpb.PutConfigValueRequest(key="k", value="1"))
    assert await value(vault, "{{config:k}}") == "1"
    await configs_admin(vault).PutConfigValue(cpb.PutConfigValueRequest(key="k", value="2"))
    assert await value(vault, "{{config:k}}") == "2"

    # Versions and recoverable deletion evict at once too.
    await admin.RollbackSecret(spb.RollbackSecretRequest(name="mine", version=1))
    assert await value(vault, "{{secret:mine}}") == "v1"
    await admin.DeleteSecret(spb.DeleteSecretRequest(name="mine", force=True))
    assert await reason_of(vault, "{{secret:mine}}") == "SECRET_DELETED"
    await admin.RestoreSecret(spb.RestoreSecretRequest(name="mine"))
    assert await value(vault, "{{secret:mine}}") == "v1"
    await admin.DeleteSecret(spb.DeleteSecretRequest(name="mine", purge=True, force=True))
    assert await reason_of(vault, "{{secret:mine}}") == "SECRET_NOT_FOUND"


async def test_a_read_that_raced_a_change_is_served_once_and_not_cached(
    make_vault: VaultFactory,
) -> None:
    """Forced interleaving: B reads the old row, A's change commits and its notification
    reaches B, and only then does B try to store what it read."""
    a, b = await replicas(make_vault, 2)
    admin = secrets_admin(a)
    await admin.CreateSecret(spb.CreateSecretRequest(name="race", value="old"))
    await b.caught_up()  # only the change below can race B's read
    read_done, release = asyncio.Event(), asyncio.Event()

    async def pause_between_read_and_store() -> None:
        read_done.set()
        await release.wait()

    for template, change, before, after in (
        (
            "{{secret:race}}",
            lambda: admin.UpdateSecret(spb.UpdateSecretRequest(name="race", value="new")),
            "old",
            "new",
        ),
        (
            "{{secret:born}}",
            lambda: admin.CreateSecret(spb.CreateSecretRequest(name="born", value="alive")),
            "SECRET_NOT_FOUND",
            "alive",
        ),
    ):
        read_done.clear()
        release.clear()
        cache_of(b).before_store = pause_between_read_and_store
        first = asyncio.create_task(_value_or_reason(b, template))
        await asyncio.wait_for(read_done.wait(), 10)  # B has read the old state
        cache_of(b).before_store = None
        await change()  # A commits ...
        await b.caught_up()  # ... and B has received the notification
        release.set()  # now B stores what it read
        assert await first == before  # served once: it was read before the change
        assert await _value_or_reason(b, template) == after
        assert await _value_or_reason(b, template) == after


async def _value_or_reason(vault: VaultHandle, template: str) -> str:
    try:
        return await value(vault, template)
    except grpc.aio.AioRpcError as err:
        return error_info(err).reason


async def test_a_lost_listener_bypasses_the_cache_until_it_listens_again(
    make_vault: VaultFactory, log_capture: LogCapture
) -> None:
    a, b = await replicas(make_vault, 2)
    await secrets_admin(a).CreateSecret(spb.CreateSecretRequest(name="s", value="1"))
    assert await value(b, "{{secret:s}}") == "1"
    changes = b.runtime.changes
    assert changes is not None and changes.listening and cache_of(b).active
    pid = changes.backend_pid
    logged = log_capture.mark()

    await b.sql("SELECT pg_terminate_backend($1)", pid)
    await eventually(lambda: not cache_of(b).active or changes.backend_pid not in (None, pid))
    assert "change listener lost" in log_capture.text(logged)
    await eventually(lambda: changes.listening and changes.backend_pid != pid)
    assert "change listener listening again" in log_capture.text(logged)
    assert cache_of(b).active

    # Back in use, from empty: the first resolve fetches, the next is a hit; a change
    # is seen after its notification.
    fetches = FetchSpy(b)
    assert await value(b, "{{secret:s}}") == "1"
    assert await value(b, "{{secret:s}}") == "1"
    assert fetches.calls == 1
    await secrets_admin(a).UpdateSecret(spb.UpdateSecretRequest(name="s", value="2"))
    await b.caught_up()
    assert await value(b, "{{secret:s}}") == "2"


async def test_while_not_listening_every_resolve_reads_the_database(
    make_vault: VaultFactory,
) -> None:
    a, b = await replicas(make_vault, 2)
    await secrets_admin(a).CreateSecret(spb.CreateSecretRequest(name="s", value="1"))
    assert await value(b, "{{secret:s}}") == "1"
    changes = b.runtime.changes
    assert changes is not None and changes._task is not None
    changes._task.cancel()  # no reconnecting while we look ...
    changes._lost("test")  # ... after the connection dropped
    assert not cache_of(b).active and len(cache_of(b)) == 0
    fetches = FetchSpy(b)
    await secrets_admin(a).UpdateSecret(spb.UpdateSecretRequest(name="s", value="2"))
    assert await value(b, "{{secret:s}}") == "2"
    assert await value(b, "{{secret:s}}") == "2"
    assert fetches.calls == 2 and len(cache_of(b)) == 0


async def test_a_change_whose_notification_was_lost_is_caught_by_the_sequence_check(
    make_vault: VaultFactory, log_capture: LogCapture
) -> None:
    a, b = await replicas(make_vault, 2, cache_check_interval=0.1)
    await secrets_admin(a).CreateSecret(spb.CreateSecretRequest(name="gone", value="here"))
    await b.caught_up()
    assert await value(b, "{{secret:gone}}") == "here"
    logged = log_capture.mark()
    await _silent_delete(a, "gone")  # committed, sequence moved, no NOTIFY sent
    assert cache_of(b).peek(SECRET_KIND, "gone") is not None
    await eventually(lambda: cache_of(b).peek(SECRET_KIND, "gone") is None)
    assert "change sequence moved without notifications" in log_capture.text(logged)
    assert await reason_of(b, "{{secret:gone}}") == "SECRET_NOT_FOUND"


async def test_a_gap_in_the_notifications_clears_at_once(
    make_vault: VaultFactory, log_capture: LogCapture
) -> None:
    a, b = await replicas(make_vault, 2, cache_check_interval=60.0)
    await secrets_admin(a).CreateSecret(spb.CreateSecretRequest(name="gone", value="here"))
    await b.caught_up()
    assert await value(b, "{{secret:gone}}") == "here"
    logged = log_capture.mark()
    await _silent_delete(a, "gone")
    await configs_admin(a).PutConfigValue(cpb.PutConfigValueRequest(key="other", value="x"))
    await b.caught_up()  # the next notification skips a number
    assert "change notifications were lost" in log_capture.text(logged)
    assert await reason_of(b, "{{secret:gone}}") == "SECRET_NOT_FOUND"


async def _silent_delete(vault: VaultHandle, name: str) -> None:
    """Delete a row with triggers off and move the sequence by hand: exactly what a lost
    notification looks like to a listener."""
    conn = await asyncpg.connect(vault.database_url, timeout=10)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute("DELETE FROM secrets WHERE name = $1", name)
            await conn.execute("UPDATE change_state SET change_seq = change_seq + 1")
    finally:
        await conn.close(timeout=5)
