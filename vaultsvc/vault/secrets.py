"""Secrets: create, read metadata, list, update, delete (recoverably) and restore. Values
are sealed here and never returned."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from vaultsvc.crypto import SealedValue, SecretContext
from vaultsvc.domain import (
    AuditRecord,
    SecretMeta,
    UsageRecord,
    safe_label,
    validate_allowed_hosts,
    validate_description,
    validate_filter,
    validate_name,
    validate_order_by,
    validate_page_size,
    validate_value,
)
from vaultsvc.errors import FailedPrecondition, InvalidArgument, NotFound, Reason
from vaultsvc.names import name_key
from vaultsvc.storage.repository import HostsChange, Sealer, scheduled_for_deletion
from vaultsvc.templates.hosts import covers
from vaultsvc.vault._base import VaultBase
from vaultsvc.vault.cache import SECRET_KIND
from vaultsvc.vault.paging import decode_page_token, encode_page_token


def _request_id(text: str) -> uuid.UUID | None:
    if not text:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        raise InvalidArgument(
            f"request_id {safe_label(text)!r} is not a UUID",
            metadata={"field": "request_id"},
        ) from None


class Secrets(VaultBase):
    async def create_secret(
        self,
        name: str,
        value: str,
        description: str,
        audit: AuditRecord,
        request_id: str = "",
        allowed_hosts: Sequence[str] = (),
    ) -> SecretMeta:
        """Create a secret. ``request_id`` (a UUID, optional) makes retries idempotent: the
        same id and name give the first reply back, the same id and another name
        FAILED_PRECONDITION (REQUEST_ID_REUSED)."""
        validate_name(name)
        plaintext = validate_value(value, required=True)
        validate_description(description)
        idempotency_key = _request_id(request_id)
        hosts = validate_allowed_hosts(allowed_hosts)
        assert plaintext is not None
        audit.secret_names = [name_key(name)]
        try:
            meta = await self.repo.create_secret(
                name,
                description,
                self._sealer(plaintext),
                self.fingerprinter.fingerprint(plaintext),
                audit,
                idempotency_key,
                hosts,
            )
            # A new secret: never resolved (so the reply equals a GetSecret of it).
            return replace(meta, usage=meta.usage or UsageRecord())
        finally:
            self.cache.invalidate(SECRET_KIND, name_key(name))

    def _sealer(self, plaintext: bytes) -> Sealer:
        """Seals ``plaintext`` for the identity the repository picks inside its transaction."""
        envelope = self.envelope

        def seal(ctx: SecretContext) -> SealedValue:
            return envelope.seal(plaintext, ctx)

        return seal

    async def get_secret(self, name: str) -> SecretMeta:
        """Metadata of a live secret. One scheduled for deletion is NOT_FOUND
        ``SECRET_DELETED`` (``ListSecrets`` with ``show_deleted`` lists it, with its times)."""
        validate_name(name)
        meta = await self.repo.get_secret(name)
        if meta is None:
            raise NotFound(f"secret not found: {name}", reason=Reason.SECRET_NOT_FOUND)
        if meta.delete_time is not None:
            raise scheduled_for_deletion(meta.name)
        return meta

    async def list_secrets(
        self,
        page_size: int,
        page_token: str,
        name_contains: str,
        *,
        show_deleted: bool = False,
        order_by: str = "",
        never_resolved: bool = False,
        unused_since: datetime | None = None,
    ) -> tuple[list[SecretMeta], str, int]:
        """A page of secrets with their usage. ``order_by``: ``name`` (default) or a time,
        newest first; page tokens are bound to the ordering and every filter."""
        limit = validate_page_size(page_size)
        contains = validate_filter(name_contains, "name_contains")
        order = validate_order_by(order_by)
        filter_key = contains.lower() + ("\x1fdeleted" if show_deleted else "")
        if order != "name":
            filter_key += f"\x1forder={order}"
        if never_resolved:
            filter_key += "\x1fnever"
        if unused_since is not None:
            filter_key += f"\x1fsince={unused_since.isoformat()}"
        after = decode_page_token(page_token, filter_key)
        rows, total, more, position = await self.repo.list_secrets(
            contains,
            after,
            limit,
            show_deleted=show_deleted,
            order_by=order,
            never_resolved=never_resolved,
            unused_since=unused_since,
        )
        next_token = encode_page_token(position, filter_key) if more else ""
        return rows, next_token, total

    async def update_secret(
        self,
        name: str,
        value: str | None,
        description: str | None,
        etag: str,
        audit: AuditRecord,
        allowed_hosts: Sequence[str] | None = None,
    ) -> SecretMeta:
        """A value (even an identical one) becomes a new current version.

        ``allowed_hosts`` None keeps the secret's hosts, a list replaces them (empty:
        unbound). Widening or clearing them needs a new value in the same update."""
        validate_name(name)
        plaintext = validate_value(value or "", required=False)
        if description is not None:
            validate_description(description)
        hosts_change = None
        if allowed_hosts is not None:
            hosts_change = _hosts_change(
                validate_allowed_hosts(allowed_hosts), new_value=plaintext is not None
            )
        audit.secret_names = [name_key(name)]
        seal = self._sealer(plaintext) if plaintext is not None else None
        fingerprint = self.fingerprinter.fingerprint(plaintext) if plaintext is not None else None
        try:
            return await self.repo.update_secret(
                name,
                etag,
                description,
                seal,
                fingerprint,
                audit,
                hosts_change,
                max_versions=self.lifecycle.max_versions,
            )
        finally:
            self.cache.invalidate(SECRET_KIND, name_key(name))

    async def delete_secret(
        self,
        name: str,
        etag: str,
        audit: AuditRecord,
        *,
        purge: bool = False,
        force: bool = False,
    ) -> None:
        """Schedule deletion for ``delete_recovery_days`` (0 or ``purge``: delete now).

        A live secret resolved within ``delete_guard_days`` is FAILED_PRECONDITION
        ``SECRET_IN_USE`` (naming its tools) unless ``force``."""
        validate_name(name)
        audit.secret_names = [name_key(name)]
        try:
            await self.repo.delete_secret(
                name,
                etag,
                audit,
                recovery_days=self.lifecycle.delete_recovery_days,
                purge=purge,
                guard_days=self.lifecycle.delete_guard_days,
                force=force,
            )
        finally:
            self.cache.invalidate(SECRET_KIND, name_key(name))

    async def restore_secret(self, name: str, audit: AuditRecord) -> SecretMeta:
        validate_name(name)
        audit.secret_names = [name_key(name)]
        try:
            return await self.repo.restore_secret(name, audit)
        finally:
            self.cache.invalidate(SECRET_KIND, name_key(name))

    async def stats(self) -> tuple[int, datetime | None]:
        return await self.repo.stats()


def _hosts_change(new: tuple[str, ...], *, new_value: bool) -> HostsChange:
    """Decides, inside the update's transaction, whether ``new`` may replace the current
    hosts: narrowing always may; widening or clearing only with a new value, so an
    existing credential can be re-pointed only by replacing it, never redirected."""

    def decide(name: str, current: tuple[str, ...]) -> tuple[str, ...]:
        widens = bool(current) and (not new or not all(covers(current, p) for p in new))
        if widens and not new_value:
            raise FailedPrecondition(
                f"secret {name}: widening or clearing allowed_hosts needs a new value in the"
                " same update (re-point a credential by replacing it)",
                reason=Reason.HOSTS_WIDEN_NEEDS_NEW_VALUE,
                metadata={"names": name},
            )
        return new

    return decide
