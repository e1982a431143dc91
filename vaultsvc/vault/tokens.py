"""Tokens kept in the database (AccessService): who may mint what, and how every process
authenticates them without asking the database on every call.

Rules. An operator may create and revoke any token; an admin only admin and viewer
tokens: resolver and operator tokens lead to values, so an admin minting one would break
the promise that no admin credential leads to a value (``OPERATOR_REQUIRED``). A token is
returned once, by CreateToken; the database keeps its SHA-256 (the lookup hash of
configured tokens) and a short fingerprint of a separate hash.

Authentication (:meth:`AccessTokens.lookup`). Each process holds every valid database
token in memory, by lookup hash, while they fit in ``token_cache_max_entries``; every
change to the table notifies every process on the change channel (kind ``t``,
:mod:`vaultsvc.storage.notify`), which drops the set, and the next call reloads it once
for all callers (a load that raced a change is not kept). So a revoked token stops working
on every replica as soon as the notification arrives, and an unknown token -- a flood of
them included -- costs a dict lookup, never a query. Expiry is checked on every use
against the clock. The set is trusted only while the change listener listens: without it
(or with more tokens than fit) every call with a non-configured token looks its hash up in
the database, at most ``LOOKUP_CONCURRENCY`` queries at a time per process, with at most
``MAX_LOOKUP_WAITERS`` calls waiting for one (more are shed with UNAVAILABLE ``OVERLOADED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from vaultsvc.auth import (
    ADMIN,
    ADMIN_MINTABLE_ROLES,
    ROLES,
    Principal,
    hash_token,
    new_token,
    token_fingerprint,
)
from vaultsvc.config import PRINCIPAL_PATTERN, ConfigError, validate_scopes
from vaultsvc.domain import AuditRecord, validate_description, validate_page_size
from vaultsvc.errors import InvalidArgument, PermissionDenied, Reason, Unavailable, VaultError
from vaultsvc.storage.notify import ChangeSink
from vaultsvc.storage.tokens import TokenRecord, TokenTable
from vaultsvc.vault.paging import decode_page_token, encode_page_token

TOKEN_KIND: Final = "t"  # noqa: S105 (a change kind, not a password)
"""Change-notification kind of ``access_tokens`` rows (key: the token id)."""
LOOKUP_CONCURRENCY: Final = 4
"""Database lookups of tokens one process runs at once while its token set is not usable."""
MAX_LOOKUP_WAITERS: Final = 64
"""Calls waiting for such a lookup beyond which more are shed (UNAVAILABLE ``OVERLOADED``):
unauthenticated work has no admission queue, so this one is bounded here."""
MAX_SCOPES: Final = 100


@dataclass
class TokenCacheStats:
    loads: int = 0
    refused_loads: int = 0
    lookups: int = 0
    """Per-call database lookups (the set was not usable)."""
    shed: int = 0
    """Calls refused because too many waited for a lookup."""
    invalidations: int = 0


class TokenCache:
    """The valid database tokens of one process, by lookup hash (see the module docstring).

    Not thread-safe: one per event loop. Driven by the change listener (through
    :class:`ChangeRouter`): :meth:`invalidate`, :meth:`clear`, :meth:`suspend`, :meth:`resume`.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.stats = TokenCacheStats()
        self._by_hash: dict[bytes, TokenRecord] = {}
        self._trusted = False
        self._loaded = False
        self._complete = False
        self._epoch = 0

    @property
    def trusted(self) -> bool:
        """The change listener listens: changes reach this process."""
        return self._trusted

    @property
    def needs_load(self) -> bool:
        return self._trusted and not self._loaded

    @property
    def usable(self) -> bool:
        """Answers from memory alone: trusted, loaded, and holding every valid token."""
        return self._trusted and self._loaded and self._complete

    def __len__(self) -> int:
        return len(self._by_hash)

    def get(self, digest: bytes) -> TokenRecord | None:
        return self._by_hash.get(digest)

    def begin_load(self) -> int:
        """A ticket to take BEFORE the query whose rows :meth:`install` may keep."""
        return self._epoch

    def install(self, ticket: int, rows: Sequence[tuple[bytes, TokenRecord]]) -> bool:
        """Keep a load (``max_entries + 1`` rows asked for) unless a change came since."""
        if not self._trusted or ticket != self._epoch:
            self.stats.refused_loads += 1
            return False
        self._by_hash = dict(rows[: self.max_entries])
        self._complete = len(rows) <= self.max_entries
        self._loaded = True
        self.stats.loads += 1
        return True

    def invalidate(self, key: str = "") -> None:
        """A token changed (created, revoked): reload before answering from memory again."""
        self._by_hash = {}
        self._loaded = False
        self._epoch += 1
        self.stats.invalidations += 1

    def clear(self) -> None:
        self.invalidate()

    def suspend(self) -> None:
        """No listener: changes may be missed, so memory is not trusted until :meth:`resume`."""
        self._trusted = False
        self.invalidate()

    def resume(self) -> None:
        self.invalidate()
        self._trusted = True


class ChangeRouter:
    """The change listener's one sink: token changes to the token cache, the rest to the
    sealed-row cache; losing or regaining the listener concerns both."""

    def __init__(self, rows: ChangeSink, tokens: TokenCache) -> None:
        self.rows = rows
        self.tokens = tokens

    def invalidate(self, kind: str, key: str) -> None:
        if kind == TOKEN_KIND:
            self.tokens.invalidate(key)
        else:
            self.rows.invalidate(kind, key)

    def clear(self) -> None:
        self.rows.clear()
        self.tokens.clear()

    def suspend(self) -> None:
        self.rows.suspend()
        self.tokens.suspend()

    def resume(self) -> None:
        self.rows.resume()
        self.tokens.resume()


def describe(record: TokenRecord) -> list[str]:
    """What an audit event records of a token (in ``secret_names``): never the token."""
    return [f"token:{record.id}", f"principal:{record.principal}", f"role:{record.role}"]


def _invalid(message: str, field: str) -> InvalidArgument:
    return InvalidArgument(message, reason=Reason.INVALID_ARGUMENT, metadata={"field": field})


def _check_may_manage(caller: Principal, role: str, action: str) -> None:
    if caller.role == ADMIN and role not in ADMIN_MINTABLE_ROLES:
        raise PermissionDenied(
            f"principal {caller.name} (role admin) may not {action} a {role} token: {role} "
            "tokens can lead to values and need the operator role",
            reason=Reason.OPERATOR_REQUIRED,
        )


def _timestamp_text(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


class AccessTokens:
    """CreateToken, ListTokens, RevokeToken, and the :class:`vaultsvc.auth.TokenStore`."""

    def __init__(self, table: TokenTable, cache: TokenCache) -> None:
        self.table = table
        self.cache = cache
        self._lookups = asyncio.Semaphore(LOOKUP_CONCURRENCY)
        self._waiting = 0
        self._loading: asyncio.Task[None] | None = None

    # ----------------------------------------------------------- authenticating

    async def lookup(self, digest: bytes) -> Principal | None:
        record = await self._find(digest)
        if record is None or record.expired(datetime.now(UTC)):
            return None
        return Principal(record.principal, record.role, record.scopes)

    async def _find(self, digest: bytes) -> TokenRecord | None:
        if self.cache.needs_load:
            await self._load()
        if self.cache.usable:
            return self.cache.get(digest)
        if self._waiting >= MAX_LOOKUP_WAITERS:
            self.cache.stats.shed += 1
            raise Unavailable(
                "too many token lookups waiting; retry shortly",
                reason=Reason.OVERLOADED,
                retry_delay=0.1,
            )
        self._waiting += 1
        try:
            await self._lookups.acquire()
        finally:
            self._waiting -= 1
        try:
            self.cache.stats.lookups += 1
            return await self.table.find(digest)
        finally:
            self._lookups.release()

    async def _load(self) -> None:
        """One load for every caller waiting on it; a failed load leaves the per-call path."""
        task = self._loading
        if task is None or task.done():
            task = self._loading = asyncio.create_task(self._load_once(), name="vault-tokens")
        with contextlib.suppress(VaultError):
            await asyncio.shield(task)

    async def _load_once(self) -> None:
        ticket = self.cache.begin_load()
        rows = await self.table.valid(self.cache.max_entries + 1)
        self.cache.install(ticket, rows)

    # ----------------------------------------------------------------- managing

    async def create(
        self,
        caller: Principal,
        principal: str,
        role: str,
        description: str,
        expire_time: datetime | None,
        scopes: Iterable[str],
        audit: AuditRecord,
    ) -> tuple[str, TokenRecord]:
        """A new token (returned here only) and its record."""
        audit.secret_names = [f"principal:{principal[:128]}", f"role:{role[:16]}"]
        principal = principal.strip()
        if not PRINCIPAL_PATTERN.match(principal):
            raise _invalid(
                "principal must be 1-128 characters: letters, digits and _ . @ - "
                "(starting with a letter or digit)",
                "principal",
            )
        if role not in ROLES:
            raise _invalid(f"role must be one of {', '.join(sorted(ROLES))}", "role")
        _check_may_manage(caller, role, "create")
        validate_description(description)
        scope_list = list(scopes)
        if len(scope_list) > MAX_SCOPES:
            raise _invalid(f"at most {MAX_SCOPES} scopes", "scopes")
        try:
            clean_scopes = validate_scopes(scope_list, role, principal, "scopes")
        except ConfigError as exc:
            raise _invalid(str(exc), "scopes") from None
        if expire_time is not None and expire_time <= datetime.now(UTC):
            raise _invalid("expire_time must be in the future (or unset: no expiry)", "expire_time")
        token = new_token()
        try:
            record = await self.table.insert(
                lookup_hash=hash_token(token),
                fingerprint=token_fingerprint(token),
                principal=principal,
                role=role,
                description=description,
                scopes=clean_scopes,
                expire_time=expire_time,
                audit=audit,
                describe=describe,
            )
        finally:
            self.cache.invalidate()  # this process at once; its notification follows
        return token, record

    async def revoke(self, caller: Principal, token_id: str, audit: AuditRecord) -> TokenRecord:
        audit.secret_names = [f"token:{token_id[:64]}"]
        try:
            parsed = uuid.UUID(token_id)
        except ValueError:
            raise _invalid("id must be a token id as ListTokens shows it (a UUID)", "id") from None

        def check(record: TokenRecord) -> None:
            _check_may_manage(caller, record.role, "revoke")

        try:
            return await self.table.delete(parsed, check=check, audit=audit, describe=describe)
        finally:
            self.cache.invalidate()

    async def list_tokens(self, page_size: int, page_token: str) -> tuple[list[TokenRecord], str]:
        limit = validate_page_size(page_size)
        position = decode_page_token(page_token, "")
        after = None
        if position is not None:
            time_text, _, id_text = position.partition("|")
            try:
                after = (datetime.fromisoformat(time_text), uuid.UUID(id_text))
            except ValueError:
                raise InvalidArgument(
                    "page_token is not a token this server issued",
                    reason=Reason.INVALID_PAGE_TOKEN,
                ) from None
        records, more = await self.table.page(after, limit)
        next_token = ""
        if more:
            last = records[-1]
            next_token = encode_page_token(f"{_timestamp_text(last.create_time)}|{last.id}", "")
        return records, next_token
