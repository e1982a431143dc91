"""Authentication (bearer tokens, mTLS subjects) and the one default-deny role table."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from vaultsvc.errors import PermissionDenied, Reason, Unauthenticated

ADMIN = "admin"
VIEWER = "viewer"
RESOLVER = "resolver"
OPERATOR = "operator"
"""Manages tokens (AccessService) and nothing else; may mint resolver tokens, so an
operator credential can lead to values: it belongs with the key custodians."""
ROLES = frozenset({ADMIN, VIEWER, RESOLVER, OPERATOR})
#: The roles of the tokens an admin may create and revoke; the others need an operator.
ADMIN_MINTABLE_ROLES = frozenset({ADMIN, VIEWER})

_PKG = "/interakt.vault.v1."

#: Every RPC the vault serves and the roles allowed to call it. Anything not listed is
#: denied. An admin can NOT resolve: no admin credential ever leads to a value.
METHOD_ROLES: Mapping[str, frozenset[str]] = {
    _PKG + "SecretService/CreateSecret": frozenset({ADMIN}),
    _PKG + "SecretService/GetSecret": frozenset({ADMIN, VIEWER}),
    _PKG + "SecretService/ListSecrets": frozenset({ADMIN, VIEWER}),
    _PKG + "SecretService/UpdateSecret": frozenset({ADMIN}),
    _PKG + "SecretService/DeleteSecret": frozenset({ADMIN}),
    _PKG + "SecretService/GetVaultStats": frozenset({ADMIN, VIEWER}),
    _PKG + "SecretService/ListSecretVersions": frozenset({ADMIN, VIEWER}),
    _PKG + "SecretService/RollbackSecret": frozenset({ADMIN}),
    _PKG + "SecretService/DestroySecretVersion": frozenset({ADMIN}),
    _PKG + "SecretService/RestoreSecret": frozenset({ADMIN}),
    # An equality oracle over values: admin only, and rate-limited (vault.versions).
    _PKG + "SecretService/IdentifySecretValue": frozenset({ADMIN}),
    _PKG + "ConfigService/PutConfigValue": frozenset({ADMIN}),
    _PKG + "ConfigService/GetConfigValue": frozenset({ADMIN, VIEWER}),
    _PKG + "ConfigService/ListConfigValues": frozenset({ADMIN, VIEWER}),
    _PKG + "ConfigService/DeleteConfigValue": frozenset({ADMIN}),
    _PKG + "ResolverService/ResolveTemplate": frozenset({RESOLVER}),
    _PKG + "ResolverService/CheckTemplate": frozenset({ADMIN, VIEWER, RESOLVER}),
    _PKG + "AuditService/ListAuditEvents": frozenset({ADMIN}),
    # Admins for admin and viewer tokens only (checked per token: vaultsvc.vault.tokens).
    _PKG + "AccessService/CreateToken": frozenset({ADMIN, OPERATOR}),
    _PKG + "AccessService/ListTokens": frozenset({ADMIN, OPERATOR}),
    _PKG + "AccessService/RevokeToken": frozenset({ADMIN, OPERATOR}),
}

#: Open to everyone, never audited: standard health checking and server reflection.
OPEN_SERVICE_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def is_open_method(method: str) -> bool:
    return method.startswith(OPEN_SERVICE_PREFIXES)


@dataclass(frozen=True)
class TokenEntry:
    principal: str
    role: str
    sha256: bytes
    scopes: tuple[str, ...] = ()
    """Resolver tokens only: secret-name patterns (``payments_*``) it may resolve; empty = all."""

    def __repr__(self) -> str:
        return (
            f"TokenEntry(principal={self.principal!r}, role={self.role!r}, scopes={self.scopes!r})"
        )


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    scopes: tuple[str, ...] = ()
    """For a resolver: the secret-name patterns it may use (empty: every secret)."""


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_token() -> str:
    """A fresh random bearer token (256 bits, URL-safe)."""
    return "vt_" + secrets.token_urlsafe(32)


_FINGERPRINT_DOMAIN = b"vaultsvc token fingerprint\0"


def token_fingerprint(token: str) -> str:
    """A short non-secret identifier of ``token`` (12 hex characters of a hash separate
    from the lookup hash): tells tokens apart in a list, and the holder of a token can
    compute it to find theirs. 48 bits of a hash of a 256-bit token reveal nothing of it."""
    return hashlib.sha256(_FINGERPRINT_DOMAIN + token.encode("utf-8")).hexdigest()[:12]


class TokenStore(Protocol):
    """Tokens kept outside the configuration (the database: ``vaultsvc.vault.tokens``)."""

    async def lookup(self, digest: bytes) -> Principal | None:
        """The principal of the valid (unexpired, unrevoked) token whose SHA-256 is ``digest``."""
        ...


class TokenAuthenticator:
    """Looks a bearer token up among configured SHA-256 hashes in constant time."""

    def __init__(self, entries: Iterable[TokenEntry], store: TokenStore | None = None) -> None:
        self._entries: Sequence[TokenEntry] = tuple(entries)
        # Built once: a Principal is immutable, so every call of one token shares it.
        self._principals = tuple(
            (e.sha256, Principal(e.principal, e.role, e.scopes)) for e in self._entries
        )
        self.store = store
        """Database tokens, asked only by :meth:`authenticate_call` when no configured
        (bootstrap) token matches."""

    def authenticate(self, authorization: str | None) -> Principal:
        """Configured tokens only (the console's sign-in)."""
        found = self.lookup_hash(_bearer_digest(authorization))
        if found is None:
            raise Unauthenticated("unknown token")
        return found

    async def authenticate_call(self, authorization: str | None) -> Principal:
        """Configured tokens, then the database's: an RPC's credential. An expired,
        revoked and unknown token get the same answer."""
        found = await self.lookup_digest(_bearer_digest(authorization))
        if found is None:
            raise Unauthenticated("unknown token")
        return found

    async def lookup_digest(self, digest: bytes) -> Principal | None:
        """The principal of the valid token whose SHA-256 is ``digest``: configured tokens,
        then the database's (the console keeps only this hash beside a session)."""
        found = self.lookup_hash(digest)
        if found is None and self.store is not None:
            found = await self.store.lookup(digest)
        return found

    def lookup_hash(self, digest: bytes) -> Principal | None:
        """The principal of the token whose SHA-256 is ``digest``, while it is valid.

        The console keeps only this hash beside a session and asks again on every request,
        so a session ends as soon as its token does.
        """
        found: Principal | None = None
        # Compare against every entry so timing does not depend on which one matches.
        for sha256, principal in self._principals:
            if hmac.compare_digest(sha256, digest):
                found = principal
        return found


def _bearer_digest(authorization: str | None) -> bytes:
    if not authorization:
        raise Unauthenticated("missing authorization metadata (expected 'Bearer <token>')")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    # str.split() splits at exactly the characters str.isspace() accepts.
    if scheme.lower() != "bearer" or not token or len(token.split(None, 1)) > 1:
        raise Unauthenticated("malformed authorization metadata (expected 'Bearer <token>')")
    return hash_token(token)


def authorize(method: str, principal: Principal) -> None:
    allowed = METHOD_ROLES.get(method)
    if allowed is None or principal.role not in allowed:
        raise PermissionDenied(
            f"principal {principal.name} (role {principal.role}) may not call {method}",
            reason=Reason.PERMISSION_DENIED,
        )
