"""Secrets: create, read metadata, list, update, delete (recoverably) and restore. Values
are sealed here and never returned."""

from __future__ import annotations

from datetime import datetime

from vaultsvc.crypto import SealedValue, SecretContext
from vaultsvc.domain import (
    AuditRecord,
    SecretMeta,
    validate_description,
    validate_filter,
    validate_name,
    validate_page_size,
    validate_value,
)
from vaultsvc.errors import NotFound, Reason
from vaultsvc.names import name_key
from vaultsvc.storage.repository import Sealer, scheduled_for_deletion
from vaultsvc.vault._base import VaultBase
from vaultsvc.vault.paging import decode_page_token, encode_page_token


class Secrets(VaultBase):
    async def create_secret(
        self, name: str, value: str, description: str, audit: AuditRecord
    ) -> SecretMeta:
        validate_name(name)
        plaintext = validate_value(value, required=True)
        validate_description(description)
        assert plaintext is not None
        audit.secret_names = [name_key(name)]
        return await self.repo.create_secret(
            name,
            description,
            self._sealer(plaintext),
            self.fingerprinter.fingerprint(plaintext),
            audit,
        )

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
        self, page_size: int, page_token: str, name_contains: str, *, show_deleted: bool = False
    ) -> tuple[list[SecretMeta], str, int]:
        limit = validate_page_size(page_size)
        contains = validate_filter(name_contains, "name_contains")
        filter_key = contains.lower() + ("\x1fdeleted" if show_deleted else "")
        after = decode_page_token(page_token, filter_key)
        rows, total, more = await self.repo.list_secrets(
            contains, after, limit, show_deleted=show_deleted
        )
        next_token = encode_page_token(name_key(rows[-1].name), filter_key) if more else ""
        return rows, next_token, total

    async def update_secret(
        self,
        name: str,
        value: str | None,
        description: str | None,
        etag: str,
        audit: AuditRecord,
    ) -> SecretMeta:
        """A value (even an identical one) becomes a new current version."""
        validate_name(name)
        plaintext = validate_value(value or "", required=False)
        if description is not None:
            validate_description(description)
        audit.secret_names = [name_key(name)]
        seal = self._sealer(plaintext) if plaintext is not None else None
        fingerprint = self.fingerprinter.fingerprint(plaintext) if plaintext is not None else None
        return await self.repo.update_secret(
            name,
            etag,
            description,
            seal,
            fingerprint,
            audit,
            max_versions=self.lifecycle.max_versions,
        )

    async def delete_secret(
        self, name: str, etag: str, audit: AuditRecord, *, purge: bool = False
    ) -> None:
        """Schedule deletion for ``delete_recovery_days`` (0 or ``purge``: delete now)."""
        validate_name(name)
        audit.secret_names = [name_key(name)]
        await self.repo.delete_secret(
            name,
            etag,
            audit,
            recovery_days=self.lifecycle.delete_recovery_days,
            purge=purge,
        )

    async def restore_secret(self, name: str, audit: AuditRecord) -> SecretMeta:
        validate_name(name)
        audit.secret_names = [name_key(name)]
        return await self.repo.restore_secret(name, audit)

    async def stats(self) -> tuple[int, datetime | None]:
        return await self.repo.stats()
