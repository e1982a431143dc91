"""The audit trail as ListAuditEvents reads it: newest first, filtered, paged."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC

from vaultsvc.domain import AuditFilter, AuditRecord, validate_filter, validate_page_size
from vaultsvc.errors import InvalidArgument, Reason
from vaultsvc.vault._base import VaultBase
from vaultsvc.vault.paging import (
    decode_audit_position,
    decode_page_token,
    encode_audit_position,
    encode_page_token,
)

#: What ``outcome`` may be: the canonical gRPC status code names.
OUTCOMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
#: ``/interakt.vault.v1.SecretService/CreateSecret`` or a bare ``CreateSecret`` (which also
#: finds the vault's own jobs, e.g. ``PurgeDeletedSecrets``, and ``UNAUTHENTICATED``).
_FULL_METHOD = re.compile(rf"/{_IDENT}(?:\.{_IDENT})*/{_IDENT}")
_BARE_METHOD = re.compile(_IDENT)


def validate_audit_filter(query: AuditFilter) -> AuditFilter:
    """``query`` checked (INVALID_ARGUMENT ``INVALID_FILTER`` saying why), outcome upper-cased."""
    validate_filter(query.secret_name, "secret_name")
    validate_filter(query.principal, "principal")
    validate_filter(query.tool, "tool")
    validate_filter(query.method, "method")
    if query.method and not (
        _FULL_METHOD.fullmatch(query.method) or _BARE_METHOD.fullmatch(query.method)
    ):
        raise InvalidArgument(
            "method must be a full gRPC method such as "
            "/interakt.vault.v1.SecretService/CreateSecret or a bare method name such as "
            "CreateSecret",
            reason=Reason.INVALID_FILTER,
        )
    outcome = query.outcome.strip().upper()
    if query.outcome and outcome not in OUTCOMES:
        raise InvalidArgument(
            f"outcome must be a gRPC status code name ({', '.join(OUTCOMES)})",
            reason=Reason.INVALID_FILTER,
        )
    if (
        query.start_time is not None
        and query.end_time is not None
        and query.end_time <= query.start_time
    ):
        raise InvalidArgument("end_time must be after start_time", reason=Reason.INVALID_FILTER)
    return replace(query, outcome=outcome)


def _filter_key(query: AuditFilter) -> str:
    """What a page token is bound to: every filter, as the query applies it."""
    parts = [query.secret_name.lower(), query.principal]
    extra = [
        query.start_time.astimezone(UTC).isoformat() if query.start_time is not None else "",
        query.end_time.astimezone(UTC).isoformat() if query.end_time is not None else "",
        query.method,
        query.outcome,
        query.tool,
    ]
    if any(extra):  # tokens of the secret/principal filters alone keep their old form
        parts += extra
    return "\x1f".join(parts)


class AuditEvents(VaultBase):
    async def list_audit_events(
        self, page_size: int, page_token: str, query: AuditFilter
    ) -> tuple[list[AuditRecord], str]:
        limit = validate_page_size(page_size)
        query = validate_audit_filter(query)
        filter_key = _filter_key(query)
        before = decode_audit_position(decode_page_token(page_token, filter_key))
        rows, more = await self.repo.list_audit(query, before, limit)
        next_token = ""
        if more and rows:
            last_id, last = rows[-1]
            assert last.time is not None
            next_token = encode_page_token(encode_audit_position(last.time, last_id), filter_key)
        return [record for _, record in rows], next_token
