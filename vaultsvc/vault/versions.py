"""Versions of a secret's value (list, roll back, destroy) and IdentifySecretValue.

Every value write is a version sealed under its own data key, bound through the AAD to
(secret id, name, version). A rollback opens the old version and seals its value afresh
as a new version (never a copy of its bytes). Identify compares HMAC fingerprints, never
values: the candidate lives only in this call's memory and is neither logged nor stored.
"""

from __future__ import annotations

from vaultsvc.crypto import DecryptionFailed, SealedValue, SecretContext
from vaultsvc.domain import (
    AuditRecord,
    SecretMeta,
    ValueMatch,
    VersionRecord,
    validate_name,
    validate_page_size,
    validate_value,
)
from vaultsvc.errors import InvalidArgument, Reason
from vaultsvc.names import name_key
from vaultsvc.storage.repository import Fingerprint, SealedRow
from vaultsvc.vault._base import VaultBase
from vaultsvc.vault.cache import SECRET_KIND
from vaultsvc.vault.paging import decode_page_token, encode_page_token


def _validate_version(version: int) -> int:
    if version < 1:
        raise InvalidArgument(
            f"version must be a positive number, got {version}", reason=Reason.INVALID_ARGUMENT
        )
    return version


class Versions(VaultBase):
    async def list_secret_versions(
        self, name: str, page_size: int, page_token: str
    ) -> tuple[list[VersionRecord], str]:
        """Newest first. Metadata only: no value, ciphertext or fingerprint."""
        validate_name(name)
        limit = validate_page_size(page_size)
        filter_key = f"versions\x1f{name_key(name)}"
        position = decode_page_token(page_token, filter_key)
        before: int | None = None
        if position is not None:
            if not position.isdigit():
                raise InvalidArgument(
                    "page_token is not a token this server issued",
                    reason=Reason.INVALID_PAGE_TOKEN,
                )
            before = int(position)
        rows, more = await self.repo.list_versions(name, before, limit)
        next_token = encode_page_token(str(rows[-1].version), filter_key) if more and rows else ""
        return rows, next_token

    async def rollback_secret(
        self, name: str, version: int, etag: str, audit: AuditRecord
    ) -> SecretMeta:
        validate_name(name)
        _validate_version(version)
        audit.secret_names = [name_key(name)]
        envelope, fingerprinter = self.envelope, self.fingerprinter

        def reseal(old: SealedRow, new: SecretContext) -> tuple[SealedValue, Fingerprint] | None:
            try:
                plaintext = envelope.open(old.sealed, old.context)
            except DecryptionFailed:
                return None
            return envelope.seal(plaintext, new), fingerprinter.fingerprint(plaintext)

        try:
            return await self.repo.rollback_secret(
                name, version, etag, reseal, audit, max_versions=self.lifecycle.max_versions
            )
        finally:
            self.cache.invalidate(SECRET_KIND, name_key(name))

    async def destroy_secret_version(self, name: str, version: int, audit: AuditRecord) -> None:
        validate_name(name)
        _validate_version(version)
        audit.secret_names = [name_key(name)]
        try:
            await self.repo.destroy_version(name, version, audit)
        finally:
            self.cache.invalidate(SECRET_KIND, name_key(name))

    async def identify_secret_value(self, value: str, audit: AuditRecord) -> list[ValueMatch]:
        """Versions whose value equals ``value``; rate-limited, audited with the count."""
        plaintext = validate_value(value, required=True)
        assert plaintext is not None
        await self.repo.take_identify_budget(
            audit.principal,
            self.lifecycle.identify_rate_per_principal,
            self.lifecycle.identify_rate_vault,
        )
        matches = await self.repo.identify(self.fingerprinter.candidates(plaintext))
        audit.match_count = len(matches)
        audit.secret_names = sorted({m.name.lower() for m in matches})
        return matches

    def fingerprint_row(self, row: SealedRow) -> Fingerprint | None:
        """The fingerprint of a stored version under the primary (None if unreadable)."""
        try:
            plaintext = self.envelope.open(row.sealed, row.context)
        except DecryptionFailed:
            return None
        return self.fingerprinter.fingerprint(plaintext)
