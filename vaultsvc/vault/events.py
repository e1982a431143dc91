"""The audit trail as ListAuditEvents reads it: newest first, filtered, paged."""

from __future__ import annotations

from vaultsvc.domain import AuditRecord, validate_filter, validate_page_size
from vaultsvc.vault._base import VaultBase
from vaultsvc.vault.paging import (
    decode_audit_position,
    decode_page_token,
    encode_audit_position,
    encode_page_token,
)


class AuditEvents(VaultBase):
    async def list_audit_events(
        self, page_size: int, page_token: str, secret_name: str, principal: str
    ) -> tuple[list[AuditRecord], str]:
        limit = validate_page_size(page_size)
        validate_filter(secret_name, "secret_name")
        validate_filter(principal, "principal")
        filter_key = f"{secret_name.lower()}\x1f{principal}"
        before = decode_audit_position(decode_page_token(page_token, filter_key))
        rows, more = await self.repo.list_audit(secret_name, principal, before, limit)
        next_token = ""
        if more and rows:
            last_id, last = rows[-1]
            assert last.time is not None
            next_token = encode_page_token(encode_audit_position(last.time, last_id), filter_key)
        return [record for _, record in rows], next_token
