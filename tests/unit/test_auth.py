"""Authentication and the role table, without a server: token lookup, the default-deny
authorization of every method, and what is open."""

from __future__ import annotations

import pytest
from interakt.vault.v1 import (
    access_service_pb2,
    audit_service_pb2,
    config_service_pb2,
    resolver_service_pb2,
    secret_service_pb2,
)

from vaultsvc.auth import (
    ADMIN,
    METHOD_ROLES,
    OPERATOR,
    RESOLVER,
    ROLES,
    VIEWER,
    Principal,
    TokenAuthenticator,
    TokenEntry,
    authorize,
    hash_token,
    is_open_method,
    new_token,
)
from vaultsvc.errors import PermissionDenied, Reason, Unauthenticated

A, V, R, OP = ADMIN, VIEWER, RESOLVER, OPERATOR

#: The role table of the README ("Roles"), written out independently of vaultsvc.auth.
EXPECTED = {
    "SecretService/CreateSecret": {A},
    "SecretService/GetSecret": {A, V},
    "SecretService/ListSecrets": {A, V},
    "SecretService/UpdateSecret": {A},
    "SecretService/DeleteSecret": {A},
    "SecretService/GetVaultStats": {A, V},
    "SecretService/ListSecretVersions": {A, V},
    "SecretService/RollbackSecret": {A},
    "SecretService/DestroySecretVersion": {A},
    "SecretService/RestoreSecret": {A},
    "SecretService/IdentifySecretValue": {A},
    "ConfigService/PutConfigValue": {A},
    "ConfigService/GetConfigValue": {A, V},
    "ConfigService/ListConfigValues": {A, V},
    "ConfigService/DeleteConfigValue": {A},
    "ResolverService/ResolveTemplate": {R},
    "ResolverService/CheckTemplate": {A, V, R},
    "AuditService/ListAuditEvents": {A},
    # Operators manage tokens and nothing else; admins only admin and viewer tokens
    # (checked per token, tests/integration/test_access_tokens.py).
    "AccessService/CreateToken": {A, OP},
    "AccessService/ListTokens": {A, OP},
    "AccessService/RevokeToken": {A, OP},
}


def _served_methods() -> set[str]:
    methods = set()
    for module in (
        secret_service_pb2,
        config_service_pb2,
        resolver_service_pb2,
        audit_service_pb2,
        access_service_pb2,
    ):
        for service in module.DESCRIPTOR.services_by_name.values():
            methods.update(f"/{service.full_name}/{m.name}" for m in service.methods)
    return methods


def test_every_rpc_of_the_protos_has_a_row_and_nothing_else_does() -> None:
    assert set(METHOD_ROLES) == _served_methods()
    assert {m.removeprefix("/interakt.vault.v1.") for m in METHOD_ROLES} == set(EXPECTED)


@pytest.mark.parametrize("method", sorted(EXPECTED))
@pytest.mark.parametrize("role", sorted(ROLES))
def test_authorize_follows_the_table(method: str, role: str) -> None:
    full = f"/interakt.vault.v1.{method}"
    who = Principal("someone", role)
    if role in EXPECTED[method]:
        authorize(full, who)
    else:
        with pytest.raises(PermissionDenied) as info:
            authorize(full, who)
        assert info.value.reason is Reason.PERMISSION_DENIED
        assert "someone" in info.value.message and role in info.value.message


def test_no_admin_credential_leads_to_a_value() -> None:
    with pytest.raises(PermissionDenied):
        authorize("/interakt.vault.v1.ResolverService/ResolveTemplate", Principal("root", ADMIN))


@pytest.mark.parametrize(
    "method",
    [
        "/interakt.vault.v1.SecretService/ExportSecrets",
        "/interakt.vault.v1.SecretService/createsecret",
        "/interakt.vault.v2.SecretService/CreateSecret",
        "",
    ],
)
def test_unknown_methods_are_denied_to_every_role(method: str) -> None:
    for role in ROLES:
        with pytest.raises(PermissionDenied):
            authorize(method, Principal("p", role))


def test_unknown_role_is_denied_everywhere() -> None:
    for method in METHOD_ROLES:
        with pytest.raises(PermissionDenied):
            authorize(method, Principal("p", "superuser"))


def test_only_health_and_reflection_are_open() -> None:
    assert is_open_method("/grpc.health.v1.Health/Check")
    assert is_open_method("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert is_open_method("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    assert not any(is_open_method(m) for m in METHOD_ROLES)
    assert not is_open_method("/grpc.health.v1.HealthX/Check")


# ---------------------------------------------------------------------- tokens

TOKENS = {role: new_token() for role in sorted(ROLES)}
AUTH = TokenAuthenticator(
    TokenEntry(principal=f"p-{role}", role=role, sha256=hash_token(token))
    for role, token in TOKENS.items()
)


def test_new_tokens_are_fresh_and_url_safe() -> None:
    made = {new_token() for _ in range(100)}
    assert len(made) == 100
    for token in made:
        assert token.startswith("vt_") and len(token) >= 40
        assert token.replace("-", "").replace("_", "").isalnum()


@pytest.mark.parametrize("role", sorted(ROLES))
def test_each_token_authenticates_as_its_principal(role: str) -> None:
    assert AUTH.authenticate(f"Bearer {TOKENS[role]}") == Principal(f"p-{role}", role)
    assert AUTH.authenticate(f"bearer   {TOKENS[role]}  ") == Principal(f"p-{role}", role)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing authorization"),
        ("", "missing authorization"),
        ("Bearer", "malformed"),
        ("Bearer ", "malformed"),
        ("Basic dXNlcjpwYXNz", "malformed"),
        ("Token vt_abc", "malformed"),
        ("Bearer vt_a vt_b", "malformed"),
        ("Bearer vt_a\tb", "malformed"),
        ("Bearer vt_unknown", "unknown token"),
    ],
)
def test_bad_authorization_is_unauthenticated(header: str | None, message: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        AUTH.authenticate(header)
    assert info.value.reason is Reason.UNAUTHENTICATED
    assert message in info.value.message


def test_only_hashes_are_kept_and_shown() -> None:
    entry = TokenEntry(principal="ci", role=RESOLVER, sha256=hash_token(TOKENS[RESOLVER]))
    assert TOKENS[RESOLVER] not in repr(entry)
    assert entry.sha256.hex() not in repr(entry)
    assert TOKENS[RESOLVER].encode() not in entry.sha256


def test_token_prefix_or_case_variant_is_not_accepted() -> None:
    token = TOKENS[ADMIN]
    for variant in (token[:-1], token + "x", token.upper(), token.swapcase()):
        with pytest.raises(Unauthenticated):
            AUTH.authenticate(f"Bearer {variant}")
