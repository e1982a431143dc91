"""Access control: bearer tokens, the one default-deny role table, open health/reflection.

Every check here goes over a real socket to a real grpc.aio server backed by the real
embedded Postgres.
"""

from __future__ import annotations

import importlib
import pkgutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import interakt.vault.v1
import pytest
from google.protobuf import message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from interakt.vault.v1 import access_service_pb2 as tpb
from interakt.vault.v1 import audit_service_pb2 as apb
from interakt.vault.v1 import config_service_pb2 as cpb
from interakt.vault.v1 import resolver_service_pb2 as rpb
from interakt.vault.v1 import secret_service_pb2 as spb

from tests.support.vault import VaultFactory, VaultHandle
from vaultsvc.api.interceptor import VaultInterceptor
from vaultsvc.auth import (
    ADMIN,
    METHOD_ROLES,
    OPERATOR,
    RESOLVER,
    VIEWER,
    Principal,
    TokenAuthenticator,
    TokenEntry,
    authorize,
    hash_token,
    new_token,
)
from vaultsvc.errors import PermissionDenied, Unauthenticated

PKG = "/interakt.vault.v1."

#: The role table of the README ("Roles"), written out independently of vaultsvc.auth.
API_ROLES: dict[str, set[str]] = {
    ADMIN: {
        PKG + "SecretService/CreateSecret",
        PKG + "SecretService/GetSecret",
        PKG + "SecretService/ListSecrets",
        PKG + "SecretService/UpdateSecret",
        PKG + "SecretService/DeleteSecret",
        PKG + "SecretService/GetVaultStats",
        PKG + "SecretService/ListSecretVersions",
        PKG + "SecretService/RollbackSecret",
        PKG + "SecretService/DestroySecretVersion",
        PKG + "SecretService/RestoreSecret",
        PKG + "SecretService/IdentifySecretValue",
        PKG + "ConfigService/PutConfigValue",
        PKG + "ConfigService/GetConfigValue",
        PKG + "ConfigService/ListConfigValues",
        PKG + "ConfigService/DeleteConfigValue",
        PKG + "ResolverService/CheckTemplate",
        PKG + "AuditService/ListAuditEvents",
        # For admin and viewer tokens only (tests/integration/test_access_tokens.py).
        PKG + "AccessService/CreateToken",
        PKG + "AccessService/ListTokens",
        PKG + "AccessService/RevokeToken",
    },
    VIEWER: {
        PKG + "SecretService/GetSecret",
        PKG + "SecretService/ListSecrets",
        PKG + "SecretService/GetVaultStats",
        PKG + "SecretService/ListSecretVersions",
        PKG + "ConfigService/GetConfigValue",
        PKG + "ConfigService/ListConfigValues",
        PKG + "ResolverService/CheckTemplate",
    },
    RESOLVER: {
        PKG + "ResolverService/ResolveTemplate",
        PKG + "ResolverService/CheckTemplate",
    },
    OPERATOR: {
        PKG + "AccessService/CreateToken",
        PKG + "AccessService/ListTokens",
        PKG + "AccessService/RevokeToken",
    },
}


@dataclass(frozen=True)
class Rpc:
    path: str
    request_type: type[Message]
    response_type: type[Message]
    client_streaming: bool
    server_streaming: bool


def vault_rpcs() -> dict[str, Rpc]:
    """Every RPC declared by every ``interakt.vault.v1.*_pb2`` module, in declaration order."""
    found: dict[str, Rpc] = {}
    for info in pkgutil.iter_modules(interakt.vault.v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"interakt.vault.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                found[path] = Rpc(
                    path,
                    message_factory.GetMessageClass(method.input_type),
                    message_factory.GetMessageClass(method.output_type),
                    method.client_streaming,
                    method.server_streaming,
                )
    return found


RPCS = vault_rpcs()


async def call(
    channel: grpc.aio.Channel,
    rpc: Rpc,
    request: Message | None = None,
    metadata: list[tuple[str, str]] | None = None,
) -> Message:
    stub = channel.unary_unary(
        rpc.path,
        request_serializer=rpc.request_type.SerializeToString,
        response_deserializer=rpc.response_type.FromString,
    )
    request = request if request is not None else rpc.request_type()
    response: Message = await stub(request, timeout=10, metadata=metadata)
    return response


async def call_error(
    channel: grpc.aio.Channel,
    rpc: Rpc,
    request: Message | None = None,
    metadata: list[tuple[str, str]] | None = None,
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(channel, rpc, request, metadata)
    return info.value


def error_reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None, f"{err.code()} carries no google.rpc.Status"
    assert len(status.details) == 1
    error_info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(error_info)
    assert error_info.domain == "vault.interakt"
    assert error_info.metadata["request_id"]
    return str(error_info.reason)


# ------------------------------------------------------------------ the table


def test_every_declared_rpc_is_in_the_role_table_and_nothing_else() -> None:
    declared = set(RPCS)
    assert declared, "no services found in interakt.vault.v1"
    table = set(METHOD_ROLES)
    assert declared - table == set(), "RPCs missing from METHOD_ROLES (they would be denied)"
    assert table - declared == set(), "METHOD_ROLES names RPCs no proto declares"
    streaming = [r.path for r in RPCS.values() if r.client_streaming or r.server_streaming]
    assert streaming == [], "the interceptor audits unary RPCs only"


def test_role_table_matches_the_api_contract() -> None:
    for role, allowed in API_ROLES.items():
        granted = {m for m, roles in METHOD_ROLES.items() if role in roles}
        assert granted == allowed, role
    assert all(
        roles and roles <= {ADMIN, VIEWER, RESOLVER, OPERATOR} for roles in METHOD_ROLES.values()
    )
    assert ADMIN not in METHOD_ROLES[PKG + "ResolverService/ResolveTemplate"]


def test_unknown_method_and_unknown_role_are_denied() -> None:
    with pytest.raises(PermissionDenied):
        authorize(PKG + "SecretService/ExportAllValues", Principal("root", ADMIN))
    with pytest.raises(PermissionDenied):
        authorize(PKG + "SecretService/GetSecret", Principal("x", "superuser"))


def test_authenticator_parses_only_well_formed_bearer_headers() -> None:
    token = new_token()
    auth = TokenAuthenticator([TokenEntry("ci", VIEWER, hash_token(token))])
    assert auth.authenticate(f"Bearer {token}") == Principal("ci", VIEWER)
    assert auth.authenticate(f"bearer {token}") == Principal("ci", VIEWER)
    for header in (
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {token}",
        f"Bearer {token} x",
        token,
        f"Token {token}",
        "Bearer vt_unknown",
    ):
        with pytest.raises(Unauthenticated):
            auth.authenticate(header)


# --------------------------------------------------------------- role x RPC


SECRET = "matrix_secret"
SECRET_VALUE = "matrix-value-1"
CONFIG = "matrix_config"
MATRIX_TOKEN_ID = "00000000-0000-4000-8000-00000000000a"
TEMPLATE = [rpb.TemplateField(key="auth", template=f"Bearer {{{{secret:{SECRET}}}}}")]

#: A request per RPC that succeeds for every role allowed to make it (in this order).
REQUESTS: dict[str, Message] = {
    PKG + "SecretService/CreateSecret": spb.CreateSecretRequest(name="matrix_new", value="v"),
    PKG + "SecretService/GetSecret": spb.GetSecretRequest(name=SECRET),
    PKG + "SecretService/ListSecrets": spb.ListSecretsRequest(),
    PKG + "SecretService/UpdateSecret": spb.UpdateSecretRequest(name=SECRET, description="new"),
    PKG + "SecretService/DeleteSecret": spb.DeleteSecretRequest(name="matrix_new"),
    PKG + "SecretService/GetVaultStats": spb.GetVaultStatsRequest(),
    PKG + "SecretService/ListSecretVersions": spb.ListSecretVersionsRequest(name=SECRET),
    PKG + "SecretService/RollbackSecret": spb.RollbackSecretRequest(name=SECRET, version=1),
    PKG + "SecretService/DestroySecretVersion": spb.DestroySecretVersionRequest(
        name=SECRET, version=1
    ),
    # DeleteSecret (above, in proto order) only scheduled matrix_new for deletion.
    PKG + "SecretService/RestoreSecret": spb.RestoreSecretRequest(name="matrix_new"),
    PKG + "SecretService/IdentifySecretValue": spb.IdentifySecretValueRequest(value="v"),
    PKG + "ConfigService/PutConfigValue": cpb.PutConfigValueRequest(key=CONFIG, value="changed"),
    PKG + "ConfigService/GetConfigValue": cpb.GetConfigValueRequest(key=CONFIG),
    PKG + "ConfigService/ListConfigValues": cpb.ListConfigValuesRequest(),
    PKG + "ConfigService/DeleteConfigValue": cpb.DeleteConfigValueRequest(key=CONFIG),
    PKG + "ResolverService/ResolveTemplate": rpb.ResolveTemplateRequest(
        fields=TEMPLATE, tool="matrix-tool"
    ),
    PKG + "ResolverService/CheckTemplate": rpb.CheckTemplateRequest(fields=TEMPLATE),
    PKG + "AuditService/ListAuditEvents": apb.ListAuditEventsRequest(),
    PKG + "AccessService/CreateToken": tpb.CreateTokenRequest(principal="matrix", role=VIEWER),
    PKG + "AccessService/ListTokens": tpb.ListTokensRequest(),
    PKG + "AccessService/RevokeToken": tpb.RevokeTokenRequest(id=MATRIX_TOKEN_ID),
}


async def seed(vault: VaultHandle) -> tuple[str, str]:
    """One secret and one config value; returns (secret etag, config value)."""
    admin = vault.channel(ADMIN)
    created = await call(
        admin,
        RPCS[PKG + "SecretService/CreateSecret"],
        spb.CreateSecretRequest(name=SECRET, value=SECRET_VALUE, description="old"),
    )
    await call(
        admin,
        RPCS[PKG + "ConfigService/PutConfigValue"],
        cpb.PutConfigValueRequest(key=CONFIG, value="original"),
    )
    assert isinstance(created, spb.Secret)
    # A database viewer token for RevokeToken (its hash: of no token anyone holds).
    await vault.sql(
        "INSERT INTO access_tokens (id, lookup_hash, fingerprint, principal, role) "
        "VALUES ($1, $2, 'matrix', 'matrix', 'viewer')",
        uuid.UUID(MATRIX_TOKEN_ID),
        hash_token(new_token()),
    )
    return created.etag, "original"


def test_requests_cover_every_rpc() -> None:
    assert set(REQUESTS) == set(RPCS)


@pytest.mark.parametrize("role", [ADMIN, VIEWER, RESOLVER, OPERATOR])
async def test_every_role_against_every_rpc(make_vault: VaultFactory, role: str) -> None:
    vault = await make_vault(tokens={r: new_token() for r in (ADMIN, VIEWER, RESOLVER, OPERATOR)})
    etag, _ = await seed(vault)
    channel = vault.channel(role)
    outcomes: dict[str, str] = {}
    for path, rpc in RPCS.items():
        if path in API_ROLES[role]:
            response = await call(channel, rpc, REQUESTS[path])
            outcomes[path] = "OK"
            if path.endswith("/ResolveTemplate"):
                assert isinstance(response, rpb.ResolveTemplateResponse)
                assert response.fields[0].value == f"Bearer {SECRET_VALUE}"
        else:
            err = await call_error(channel, rpc, REQUESTS[path])
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (path, err.code())
            assert error_reason(err) == "PERMISSION_DENIED"
            assert role in str(err.details())
            outcomes[path] = err.code().name

    rows = await vault.sql("SELECT name, etag, description FROM secrets ORDER BY name")
    configs = await vault.sql("SELECT key, value FROM config_values")
    if role == ADMIN:
        assert [(r["name"], r["description"]) for r in rows] == [
            ("matrix_new", ""),
            (SECRET, "new"),
        ]
        assert configs == []
    else:
        # Denied mutations changed nothing.
        assert [(r["name"], r["etag"], r["description"]) for r in rows] == [(SECRET, etag, "old")]
        assert [(c["key"], c["value"]) for c in configs] == [(CONFIG, "original")]

    await vault.runtime.audit.flush()
    events = await vault.sql(
        "SELECT method, outcome FROM audit_events WHERE principal = $1", f"test-{role}"
    )
    assert {(e["method"], e["outcome"]) for e in events} == set(outcomes.items())


async def test_admin_can_never_resolve(vault: VaultHandle) -> None:
    await seed(vault)
    rpc = RPCS[PKG + "ResolverService/ResolveTemplate"]
    for fields in (TEMPLATE, [rpb.TemplateField(key="x", template="literal")]):
        err = await call_error(vault.channel(ADMIN), rpc, rpb.ResolveTemplateRequest(fields=fields))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED


# ------------------------------------------------------------ authentication


BAD_HEADERS: list[tuple[str, list[tuple[str, str]]]] = [
    ("missing", []),
    ("basic", [("authorization", "Basic dXNlcjpwYXNz")]),
    ("bearer without token", [("authorization", "Bearer")]),
    ("bearer with blank token", [("authorization", "Bearer   ")]),
    ("two words", [("authorization", "Bearer a b")]),
    ("bare token", [("authorization", "vt_abc")]),
    ("unknown token", [("authorization", f"Bearer {new_token()}")]),
]


async def test_missing_malformed_and_unknown_tokens_are_unauthenticated(
    vault: VaultHandle,
) -> None:
    channel = vault.channel(None)
    for label, metadata in BAD_HEADERS:
        for path, rpc in RPCS.items():
            err = await call_error(channel, rpc, REQUESTS[path], metadata)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (label, path, err.code())
            assert error_reason(err) == "UNAUTHENTICATED"
    # A valid token's hash, or the token with a character changed, is not the token.
    token = vault.tokens[ADMIN]
    for wrong in (hash_token(token).hex(), token[:-1] + ("A" if token[-1] != "A" else "B")):
        err = await call_error(
            channel,
            RPCS[PKG + "SecretService/ListSecrets"],
            None,
            [("authorization", f"Bearer {wrong}")],
        )
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await vault.sql("SELECT 1 FROM secrets") == []
    # Recorded aggregated: one event per peer address and minute, with the count.
    await vault.runtime.audit.flush()
    events = await vault.sql(
        "SELECT principal, method, count FROM audit_events WHERE outcome = 'UNAUTHENTICATED'"
    )
    assert sum(e["count"] for e in events) == len(BAD_HEADERS) * len(RPCS) + 2
    assert {(e["principal"], e["method"]) for e in events} == {("", "UNAUTHENTICATED")}


async def test_revoked_token_is_refused_by_a_server_without_it(
    vault: VaultHandle, make_vault: VaultFactory
) -> None:
    await seed(vault)
    get = RPCS[PKG + "SecretService/GetSecret"]
    await call(vault.channel(VIEWER), get, REQUESTS[get.path])
    remaining = {ADMIN: vault.tokens[ADMIN], RESOLVER: vault.tokens[RESOLVER]}
    restarted = await make_vault(
        database_url=vault.database_url, master_keys=vault.master_keys, tokens=remaining
    )
    revoked = restarted.channel(None, token=vault.tokens[VIEWER])
    err = await call_error(revoked, get, REQUESTS[get.path])
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    # The tokens still configured keep working against the same data.
    assert await call(restarted.channel(ADMIN), get, REQUESTS[get.path])


# ------------------------------------------------------- health and reflection


async def test_health_and_reflection_need_no_token(vault: VaultHandle) -> None:
    for metadata in ([], [("authorization", "Basic nonsense")]):
        channel = vault.channel(None, metadata=metadata)
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", *(p.split("/")[1] for p in RPCS)):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = [
            r
            async for r in stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        ]
        listed = {s.name for s in responses[0].list_services_response.service}
        assert listed == {
            *(p.split("/")[1] for p in RPCS),
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "grpc.reflection.v1.ServerReflection",
        }
    # Health and reflection are not audited; nothing else happened.
    assert await vault.sql("SELECT 1 FROM audit_events") == []


# ------------------------------------------------ streaming methods fail closed


@pytest.fixture
async def streaming_server(vault: VaultHandle) -> AsyncIterator[str]:
    """A grpc.aio server with the vault's interceptor and methods outside the table."""

    async def stream_reply(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"leak"

    async def unary_reply(request: bytes, context: Any) -> bytes:
        return b"leak"

    def identity(data: bytes) -> bytes:
        return data

    passthrough: dict[str, Callable[[bytes], bytes]] = {
        "request_deserializer": identity,
        "response_serializer": identity,
    }
    handlers = {
        "WatchSecrets": grpc.unary_stream_rpc_method_handler(stream_reply, **passthrough),
        "ExportAll": grpc.unary_unary_rpc_method_handler(unary_reply, **passthrough),
    }
    runtime = vault.runtime
    interceptor = VaultInterceptor(
        TokenAuthenticator(runtime.settings.tokens), runtime.audit, runtime.settings
    )
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("interakt.vault.v1.SecretService", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


async def test_methods_outside_the_table_and_streaming_methods_are_denied(
    vault: VaultHandle, streaming_server: str
) -> None:
    metadata = [("authorization", f"Bearer {vault.tokens[ADMIN]}")]
    async with grpc.aio.insecure_channel(streaming_server) as channel:
        unary = channel.unary_unary(PKG + "SecretService/ExportAll", None, None)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(b"", metadata=metadata, timeout=5)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED

        stream = channel.unary_stream(PKG + "SecretService/WatchSecrets", None, None)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stream(b"", metadata=metadata, timeout=5):
                pass
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stream(b"", timeout=5):
                pass
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await vault.runtime.audit.flush()
    events = await vault.sql("SELECT method, outcome, count FROM audit_events ORDER BY id")
    assert [(e["method"], e["outcome"], e["count"]) for e in events] == [
        (PKG + "SecretService/ExportAll", "PERMISSION_DENIED", 1),
        (PKG + "SecretService/WatchSecrets", "PERMISSION_DENIED", 1),
        ("UNAUTHENTICATED", "UNAUTHENTICATED", 1),
    ]
