"""Config values: plain (unencrypted) named values that templates can reference."""

from __future__ import annotations

from vaultsvc.domain import (
    AuditRecord,
    ConfigRecord,
    validate_config_value,
    validate_description,
    validate_filter,
    validate_name,
    validate_page_size,
)
from vaultsvc.errors import NotFound, Reason
from vaultsvc.names import name_key
from vaultsvc.vault._base import VaultBase
from vaultsvc.vault.cache import CONFIG_KIND
from vaultsvc.vault.paging import decode_page_token, encode_page_token


class Configs(VaultBase):
    async def put_config(
        self, key: str, value: str, description: str, audit: AuditRecord
    ) -> ConfigRecord:
        validate_name(key, what="key")
        validate_config_value(value)
        validate_description(description)
        try:
            return await self.repo.put_config(key, value, description, audit)
        finally:
            self.cache.invalidate(CONFIG_KIND, name_key(key))

    async def get_config(self, key: str) -> ConfigRecord:
        validate_name(key, what="key")
        record = await self.repo.get_config(key)
        if record is None:
            raise NotFound(f"config value not found: {key}", reason=Reason.CONFIG_NOT_FOUND)
        return record

    async def list_configs(
        self, page_size: int, page_token: str, key_contains: str
    ) -> tuple[list[ConfigRecord], str, int]:
        limit = validate_page_size(page_size)
        contains = validate_filter(key_contains, "key_contains")
        after = decode_page_token(page_token, contains.lower())
        rows, total, more = await self.repo.list_configs(contains, after, limit)
        next_token = encode_page_token(name_key(rows[-1].key), contains.lower()) if more else ""
        return rows, next_token, total

    async def delete_config(self, key: str, audit: AuditRecord, *, force: bool = False) -> None:
        """A value resolved within ``delete_guard_days`` is FAILED_PRECONDITION
        ``CONFIG_IN_USE`` (naming its tools) unless ``force``."""
        validate_name(key, what="key")
        try:
            await self.repo.delete_config(
                key, audit, guard_days=self.lifecycle.delete_guard_days, force=force
            )
        finally:
            self.cache.invalidate(CONFIG_KIND, name_key(key))
