"""Database tokens (AccessService) against REAL Postgres and REAL grpc servers: create ->
use -> revoke -> refused on another replica within a second, expiry, who may mint what,
the audit trail, and a token cache that is not trusted while its change listener is down."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
from google.protobuf import timestamp_pb2
from interakt.vault.v1 import access_service_pb2 as tpb
from interakt.vault.v1 import access_service_pb2_grpc as tgrpc
from interakt.vault.v1 import audit_service_pb2 as apb
from interakt.vault.v1 import resolver_service_pb2_grpc as rgrpc
from interakt.vault.v1 import secret_service_pb2 as spb
from interakt.vault.v1 import secret_service_pb2_grpc as sgrpc

from tests.support.resolve import RAW, resolve
from tests.support.rpc import audit_admin, expect_error, secrets_admin
from tests.support.vault import VaultFactory, VaultHandle
from vaultsvc.auth import (
    ADMIN,
    OPERATOR,
    RESOLVER,
    VIEWER,
    hash_token,
    new_token,
    token_fingerprint,
)
from vaultsvc.vault.tokens import LOOKUP_CONCURRENCY, MAX_LOOKUP_WAITERS, TokenCache

Code = grpc.StatusCode


def four_tokens() -> dict[str, str]:
    """Configured (bootstrap) tokens, one per role, the operator's included."""
    return {role: new_token() for role in (ADMIN, VIEWER, RESOLVER, OPERATOR)}


async def replicas(make_vault: VaultFactory, count: int, **overrides: object) -> list[VaultHandle]:
    first = await make_vault(tokens=four_tokens(), **overrides)
    return [first] + [
        await make_vault(
            database_url=first.database_url,
            master_keys=first.master_keys,
            tokens=first.tokens,
            **overrides,
        )
        for _ in range(count - 1)
    ]


def access(
    vault: VaultHandle, role: str | None = OPERATOR, token: str | None = None
) -> tgrpc.AccessServiceStub:
    return tgrpc.AccessServiceStub(vault.channel(role, token=token))


def token_cache(vault: VaultHandle) -> TokenCache:
    assert vault.runtime.tokens is not None
    return vault.runtime.tokens.cache


def expiring(at: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


async def resolves(vault: VaultHandle, token: str, template: str = "{{secret:api}}") -> str:
    stub = rgrpc.ResolverServiceStub(vault.channel(token=token))
    return (await resolve(stub, [("f", template, RAW)]))[0][1]


async def refusal(vault: VaultHandle, token: str) -> tuple[grpc.StatusCode, str] | None:
    """None when ``token`` resolves on ``vault``, else the code and message of the refusal."""
    try:
        await resolves(vault, token)
    except grpc.aio.AioRpcError as err:
        return err.code(), str(err.details())
    return None


async def until(check: Callable[[], Awaitable[bool]], deadline: float) -> bool:
    """Poll ``check`` until it is true or ``deadline`` passes."""
    while True:
        if await check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)


async def test_a_revoked_token_is_refused_on_another_replica_within_a_second(
    make_vault: VaultFactory,
) -> None:
    a, b = await replicas(make_vault, 2)
    await secrets_admin(a).CreateSecret(spb.CreateSecretRequest(name="api", value="k-1"))
    created = await access(a).CreateToken(
        tpb.CreateTokenRequest(principal="ci-runner", role=RESOLVER, description="CI")
    )
    token = created.token
    assert token.startswith("vt_") and created.info.role == RESOLVER
    assert created.info.fingerprint == token_fingerprint(token)

    # Used on the OTHER replica (it hears of the new token through the change channel).
    assert await until(lambda: _works(b, token), time.monotonic() + 10)
    assert await resolves(a, token) == "k-1"
    await b.caught_up()  # (a notification still in flight would drop B's set once more)
    assert await resolves(b, token) == "k-1"
    assert token_cache(b).usable

    await access(a).RevokeToken(tpb.RevokeTokenRequest(id=created.info.id))
    revoked_at = time.monotonic()
    assert await refusal(a, token) is not None  # at once where it was revoked
    refused = await until(lambda: _refused(b, token), revoked_at + 1.0)
    assert refused, "the revoked token still worked on the other replica after 1 s"

    # Revoked and unknown tokens are refused alike: nothing tells which.
    await b.caught_up()
    assert await refusal(b, token) == await refusal(b, new_token())
    lookups = token_cache(b).stats.lookups
    assert await refusal(b, token) == (Code.UNAUTHENTICATED, "unknown token")
    assert token_cache(b).usable
    assert token_cache(b).stats.lookups == lookups, "answered from memory, not the database"


async def _works(vault: VaultHandle, token: str) -> bool:
    return await refusal(vault, token) is None


async def _refused(vault: VaultHandle, token: str) -> bool:
    return await refusal(vault, token) is not None


async def test_an_expired_token_is_refused_on_every_use(make_vault: VaultFactory) -> None:
    (vault,) = await replicas(make_vault, 1)
    await secrets_admin(vault).CreateSecret(spb.CreateSecretRequest(name="api", value="k-1"))
    ends = datetime.now(UTC) + timedelta(seconds=1)
    created = await access(vault).CreateToken(
        tpb.CreateTokenRequest(principal="short", role=RESOLVER, expire_time=expiring(ends))
    )
    assert abs(created.info.expire_time.ToDatetime(tzinfo=UTC) - ends) < timedelta(milliseconds=1)
    assert await resolves(vault, created.token) == "k-1"
    assert await until(lambda: _refused(vault, created.token), time.monotonic() + 10)
    assert datetime.now(UTC) >= ends - timedelta(milliseconds=50)
    assert await refusal(vault, created.token) == (Code.UNAUTHENTICATED, "unknown token")
    # Still listed (with its expiry), until revoked.
    listed = await access(vault).ListTokens(tpb.ListTokensRequest())
    assert [t.id for t in listed.tokens] == [created.info.id]

    past = datetime.now(UTC) - timedelta(seconds=1)
    _, info = await expect_error(
        access(vault).CreateToken(
            tpb.CreateTokenRequest(principal="late", role=VIEWER, expire_time=expiring(past))
        ),
        Code.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert info.metadata["field"] == "expire_time"


async def test_who_may_mint_and_revoke_what(make_vault: VaultFactory) -> None:
    (vault,) = await replicas(make_vault, 1)
    admin, operator = access(vault, ADMIN), access(vault, OPERATOR)

    # Admins: admin and viewer tokens only.
    viewer = await admin.CreateToken(tpb.CreateTokenRequest(principal="dash", role=VIEWER))
    minted_admin = await admin.CreateToken(tpb.CreateTokenRequest(principal="ops2", role=ADMIN))
    listed = await sgrpc.SecretServiceStub(vault.channel(token=viewer.token)).ListSecrets(
        spb.ListSecretsRequest()
    )
    assert listed.secrets == []
    for role in (RESOLVER, OPERATOR):
        message, _ = await expect_error(
            admin.CreateToken(tpb.CreateTokenRequest(principal="x", role=role)),
            Code.PERMISSION_DENIED,
            "OPERATOR_REQUIRED",
        )
        assert f"may not create a {role} token" in message and "operator role" in message
    # A database admin token is an admin like any other: still no resolver tokens.
    await expect_error(
        access(vault, None, minted_admin.token).CreateToken(
            tpb.CreateTokenRequest(principal="x", role=RESOLVER)
        ),
        Code.PERMISSION_DENIED,
        "OPERATOR_REQUIRED",
    )

    # Operators: every role, and so can an operator token from the database.
    made = {}
    for role in (RESOLVER, OPERATOR, ADMIN, VIEWER):
        made[role] = await operator.CreateToken(
            tpb.CreateTokenRequest(principal=f"made-{role}", role=role)
        )
    db_operator = access(vault, None, made[OPERATOR].token)
    extra = await db_operator.CreateToken(tpb.CreateTokenRequest(principal="r2", role=RESOLVER))

    # An admin cannot revoke resolver or operator tokens either (the token keeps working).
    await secrets_admin(vault).CreateSecret(spb.CreateSecretRequest(name="api", value="v"))
    await expect_error(
        admin.RevokeToken(tpb.RevokeTokenRequest(id=extra.info.id)),
        Code.PERMISSION_DENIED,
        "OPERATOR_REQUIRED",
    )
    assert await resolves(vault, extra.token) == "v"
    await admin.RevokeToken(tpb.RevokeTokenRequest(id=viewer.info.id))
    await db_operator.RevokeToken(tpb.RevokeTokenRequest(id=extra.info.id))
    assert await refusal(vault, extra.token) == (Code.UNAUTHENTICATED, "unknown token")
    await expect_error(
        operator.RevokeToken(tpb.RevokeTokenRequest(id=extra.info.id)), Code.NOT_FOUND, "NOT_FOUND"
    )
    await expect_error(
        operator.RevokeToken(tpb.RevokeTokenRequest(id="not-an-id")),
        Code.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )

    # Viewers and resolvers (configured or minted) cannot use AccessService at all.
    for stub in (
        access(vault, VIEWER),
        access(vault, RESOLVER),
        access(vault, None, made[VIEWER].token),
        access(vault, None, made[RESOLVER].token),
    ):
        await expect_error(stub.ListTokens(tpb.ListTokensRequest()), Code.PERMISSION_DENIED)
        await expect_error(
            stub.CreateToken(tpb.CreateTokenRequest(principal="x", role=VIEWER)),
            Code.PERMISSION_DENIED,
            "PERMISSION_DENIED",
        )
    # And an operator may use AccessService only.
    for who in (
        sgrpc.SecretServiceStub(vault.channel(OPERATOR)),
        sgrpc.SecretServiceStub(vault.channel(token=made[OPERATOR].token)),
    ):
        await expect_error(who.ListSecrets(spb.ListSecretsRequest()), Code.PERMISSION_DENIED)
    await expect_error(
        resolves(vault, made[OPERATOR].token), Code.PERMISSION_DENIED, "PERMISSION_DENIED"
    )


async def test_bad_requests_get_clear_errors(make_vault: VaultFactory) -> None:
    (vault,) = await replicas(make_vault, 1)
    operator = access(vault)
    cases = [
        (tpb.CreateTokenRequest(principal="", role=VIEWER), "principal"),
        (tpb.CreateTokenRequest(principal="a b", role=VIEWER), "principal"),
        (tpb.CreateTokenRequest(principal="p", role="root"), "role"),
        (tpb.CreateTokenRequest(principal="p", role=VIEWER, scopes=["api"]), "scopes"),
        (tpb.CreateTokenRequest(principal="p", role=RESOLVER, scopes=["bad scope"]), "scopes"),
    ]
    for request, field in cases:
        _, info = await expect_error(
            operator.CreateToken(request), Code.INVALID_ARGUMENT, "INVALID_ARGUMENT"
        )
        assert info.metadata["field"] == field
    await expect_error(
        operator.CreateToken(
            tpb.CreateTokenRequest(principal="p", role=VIEWER, description="x" * 5000)
        ),
        Code.INVALID_ARGUMENT,
        "DESCRIPTION_TOO_LONG",
    )
    await expect_error(
        operator.ListTokens(tpb.ListTokensRequest(page_token="nope")),
        Code.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )


async def test_resolver_scopes_apply_to_database_tokens(make_vault: VaultFactory) -> None:
    (vault,) = await replicas(make_vault, 1)
    admin = secrets_admin(vault)
    await admin.CreateSecret(spb.CreateSecretRequest(name="payments_key", value="p"))
    await admin.CreateSecret(spb.CreateSecretRequest(name="api", value="a"))
    scoped = await access(vault).CreateToken(
        tpb.CreateTokenRequest(principal="pay", role=RESOLVER, scopes=["payments_*"])
    )
    assert list(scoped.info.scopes) == ["payments_*"]
    assert await resolves(vault, scoped.token, "{{secret:payments_key}}") == "p"
    await expect_error(
        resolves(vault, scoped.token, "{{secret:api}}"),
        Code.PERMISSION_DENIED,
        "SECRET_NOT_ALLOWED",
    )


async def test_list_tokens_pages_and_never_shows_a_token_or_its_hash(
    make_vault: VaultFactory,
) -> None:
    (vault,) = await replicas(make_vault, 1)
    operator = access(vault)
    created = [
        await operator.CreateToken(
            tpb.CreateTokenRequest(principal=f"p{i}", role=VIEWER, description=f"number {i}")
        )
        for i in range(5)
    ]
    seen: list[tpb.TokenInfo] = []
    page_token = ""
    while True:
        page = await operator.ListTokens(tpb.ListTokensRequest(page_size=2, page_token=page_token))
        assert len(page.tokens) <= 2
        seen.extend(page.tokens)
        page_token = page.next_page_token
        if not page_token:
            break
        for c in created:
            assert c.token.encode() not in page.SerializeToString()
    assert [t.id for t in seen] == [c.info.id for c in created]
    assert [t.description for t in seen] == [f"number {i}" for i in range(5)]
    for info, made in zip(seen, created, strict=True):
        assert info == made.info
        assert info.fingerprint == token_fingerprint(made.token) and len(info.fingerprint) == 12
        digest = hash_token(made.token)
        for text in (made.token, digest.hex()):
            assert text not in str(info) and text.encode() not in info.SerializeToString()
        assert digest not in info.SerializeToString()
        assert info.fingerprint not in digest.hex()
    # In the database: the hash, never the token.
    rows = await vault.sql("SELECT * FROM access_tokens")
    assert len(rows) == 5
    assert not any(c.token in repr([dict(r) for r in rows]) for c in created)


async def test_create_and_revoke_are_audited_without_the_token(make_vault: VaultFactory) -> None:
    (vault,) = await replicas(make_vault, 1)
    created = await access(vault).CreateToken(tpb.CreateTokenRequest(principal="ci", role=RESOLVER))
    await expect_error(
        access(vault, ADMIN).RevokeToken(tpb.RevokeTokenRequest(id=created.info.id)),
        Code.PERMISSION_DENIED,
    )
    await access(vault).RevokeToken(tpb.RevokeTokenRequest(id=created.info.id))
    await vault.runtime.audit.flush()
    events = (await audit_admin(vault).ListAuditEvents(apb.ListAuditEventsRequest())).events
    token_events = [
        (e.method.rpartition("/")[2], e.principal, e.outcome, list(e.secret_names))
        for e in reversed(events)
        if "AccessService" in e.method
    ]
    described = [f"token:{created.info.id}", "principal:ci", "role:resolver"]
    assert token_events == [
        ("CreateToken", "test-operator", "OK", described),
        ("RevokeToken", "test-admin", "PERMISSION_DENIED", [f"token:{created.info.id}"]),
        ("RevokeToken", "test-operator", "OK", described),
    ]
    rows = await vault.sql("SELECT * FROM audit_events")
    dumped = repr([dict(r) for r in rows])
    assert created.token not in dumped and hash_token(created.token).hex() not in dumped


async def test_a_flood_of_unknown_tokens_costs_no_query_and_evicts_nothing(
    make_vault: VaultFactory,
) -> None:
    (vault,) = await replicas(make_vault, 1, token_cache_max_entries=3)
    await secrets_admin(vault).CreateSecret(spb.CreateSecretRequest(name="api", value="k"))
    valid = await access(vault).CreateToken(tpb.CreateTokenRequest(principal="r", role=RESOLVER))
    assert await resolves(vault, valid.token) == "k"
    await vault.caught_up()
    assert await resolves(vault, valid.token) == "k"
    assert token_cache(vault).usable
    stats = token_cache(vault).stats
    loads, lookups = stats.loads, stats.lookups
    for _ in range(200):
        assert await refusal(vault, new_token()) == (Code.UNAUTHENTICATED, "unknown token")
    assert await resolves(vault, valid.token) == "k"
    assert (stats.loads, stats.lookups) == (loads, lookups)

    # More valid tokens than fit: the set is not complete, so lookups go to the database.
    for i in range(3):
        await access(vault).CreateToken(tpb.CreateTokenRequest(principal=f"v{i}", role=VIEWER))
    assert await resolves(vault, valid.token) == "k"
    assert not token_cache(vault).usable and stats.lookups > lookups


async def test_while_the_listener_is_down_the_token_cache_is_not_trusted(
    make_vault: VaultFactory,
) -> None:
    a, b = await replicas(make_vault, 2)
    await secrets_admin(a).CreateSecret(spb.CreateSecretRequest(name="api", value="k"))
    created = await access(a).CreateToken(tpb.CreateTokenRequest(principal="r", role=RESOLVER))
    assert await until(lambda: _works(b, created.token), time.monotonic() + 10)
    await b.caught_up()
    assert await resolves(b, created.token) == "k"
    assert token_cache(b).usable and len(token_cache(b)) == 1

    changes = b.runtime.changes
    assert changes is not None and changes._task is not None
    changes._task.cancel()  # no reconnecting while we look ...
    pid = changes.backend_pid
    await b.sql("SELECT pg_terminate_backend($1)", pid)  # ... after its backend is killed
    deadline = time.monotonic() + 10
    while changes.listening:
        assert time.monotonic() < deadline, "the listener did not notice its backend went"
        await asyncio.sleep(0.01)
    assert not token_cache(b).trusted and not token_cache(b).usable

    # B missed the revocation's notification, yet refuses the token at once.
    await access(a).RevokeToken(tpb.RevokeTokenRequest(id=created.info.id))
    lookups = token_cache(b).stats.lookups
    assert await refusal(b, created.token) == (Code.UNAUTHENTICATED, "unknown token")
    assert token_cache(b).stats.lookups == lookups + 1
    # And a token created meanwhile works at once.
    fresh = await access(a).CreateToken(tpb.CreateTokenRequest(principal="r2", role=RESOLVER))
    assert await resolves(b, fresh.token) == "k"


async def test_with_the_cache_off_database_tokens_are_looked_up_per_call(
    make_vault: VaultFactory,
) -> None:
    """With the resolve cache (and so the listener) off, database tokens are looked up on
    every call: they still work, and revocation is still immediate."""
    (vault,) = await replicas(make_vault, 1, cache_enabled=False)
    assert vault.runtime.changes is None
    await secrets_admin(vault).CreateSecret(spb.CreateSecretRequest(name="api", value="k"))
    created = await access(vault).CreateToken(tpb.CreateTokenRequest(principal="r", role=RESOLVER))
    assert await resolves(vault, created.token) == "k"
    await access(vault).RevokeToken(tpb.RevokeTokenRequest(id=created.info.id))
    assert await refusal(vault, created.token) == (Code.UNAUTHENTICATED, "unknown token")
    assert token_cache(vault).stats.lookups == 2


async def vaultctl(vault: VaultHandle, token: str, *args: str) -> tuple[int, str, str]:
    """``vaultctl *args`` as a subprocess (this test's loop serves the vault meanwhile)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(VAULT_ADDR=vault.address, VAULT_TOKEN=token)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vaultsvc_client.cli",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_vaultctl_tokens_create_list_revoke(make_vault: VaultFactory) -> None:
    (vault,) = await replicas(make_vault, 1)
    await secrets_admin(vault).CreateSecret(spb.CreateSecretRequest(name="api", value="k"))
    operator = vault.tokens[OPERATOR]

    code, out, err = await vaultctl(
        vault, operator, "tokens", "create", "ci", "--role", "resolver", "--expires-in", "2h"
    )
    assert code == 0, err
    token = out.strip()
    assert out == token + "\n" and token.startswith("vt_"), "the token alone on stdout"
    assert "WARNING" in err and "shown only now" in err and token not in err
    assert await resolves(vault, token) == "k"

    code, out, err = await vaultctl(vault, operator, "--json", "tokens", "list")
    assert code == 0, err
    (listed,) = json.loads(out)["tokens"]
    assert listed["principal"] == "ci" and listed["role"] == "resolver"
    assert listed["fingerprint"] == token_fingerprint(token) and listed["expire_time"]
    assert token not in out and hash_token(token).hex() not in out
    code, table, _ = await vaultctl(vault, operator, "tokens", "list")
    assert code == 0 and listed["id"] in table and token not in table

    code, out, err = await vaultctl(
        vault, vault.tokens[ADMIN], "tokens", "create", "x", "--role", "operator"
    )
    assert code != 0 and "operator role" in err and out == ""
    code, _, err = await vaultctl(
        vault, operator, "tokens", "create", "x", "--role", "viewer", "--expires-in", "soon"
    )
    assert code == 2 and "--expires-in" in err

    code, out, err = await vaultctl(vault, operator, "tokens", "revoke", listed["id"], "--yes")
    assert code == 0 and f"revoked token {listed['id']}" in out, err
    assert await refusal(vault, token) == (Code.UNAUTHENTICATED, "unknown token")


async def test_lookups_without_a_trusted_set_are_bounded(make_vault: VaultFactory) -> None:
    """Without a listener every unknown token is a query: at most LOOKUP_CONCURRENCY run,
    MAX_LOOKUP_WAITERS more wait, the rest are shed at once; configured tokens never wait."""
    (vault,) = await replicas(make_vault, 1, cache_enabled=False)
    blocker = await asyncpg.connect(vault.database_url)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE access_tokens IN ACCESS EXCLUSIVE MODE")
        extra = 5
        calls = [
            asyncio.ensure_future(refusal(vault, new_token()))
            for _ in range(LOOKUP_CONCURRENCY + MAX_LOOKUP_WAITERS + extra)
        ]
        deadline = time.monotonic() + 10
        while token_cache(vault).stats.shed < extra:
            assert time.monotonic() < deadline, "nothing was shed"
            await asyncio.sleep(0.01)
        # Bootstrap credentials do not queue behind the stuck lookups.
        listed = await secrets_admin(vault).ListSecrets(spb.ListSecretsRequest(), timeout=5)
        assert listed.secrets == []
        await tx.rollback()
    finally:
        await blocker.close()
    outcomes = await asyncio.gather(*calls)
    assert outcomes.count((Code.UNAUTHENTICATED, "unknown token")) == (
        LOOKUP_CONCURRENCY + MAX_LOOKUP_WAITERS
    )
    shed = [o for o in outcomes if o is not None and o[0] == Code.UNAVAILABLE]
    assert len(shed) == extra and token_cache(vault).stats.shed == extra
