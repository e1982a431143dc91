"""AuditService: the audit trail, newest first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from interakt.vault.v1 import audit_service_pb2 as apb
from interakt.vault.v1 import audit_service_pb2_grpc as agrpc

from vaultsvc.api.convert import timestamp
from vaultsvc.domain import AuditFilter
from vaultsvc.errors import InvalidArgument, Reason
from vaultsvc.vault import Vault


def _time(
    request: apb.ListAuditEventsRequest, field: Literal["start_time", "end_time"]
) -> datetime | None:
    if not request.HasField(field):
        return None
    try:
        return getattr(request, field).ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]
    except (ValueError, OverflowError):
        raise InvalidArgument(
            f"{field} is not a valid time (0001-01-01 to 9999-12-31)",
            reason=Reason.INVALID_FILTER,
        ) from None


def audit_filter(request: apb.ListAuditEventsRequest) -> AuditFilter:
    """The filters of a ListAuditEvents request (checked by the vault)."""
    return AuditFilter(
        secret_name=request.secret_name,
        principal=request.principal,
        start_time=_time(request, "start_time"),
        end_time=_time(request, "end_time"),
        method=request.method,
        outcome=request.outcome,
        tool=request.tool,
    )


class AuditServicer(agrpc.AuditServiceServicer):
    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    async def ListAuditEvents(
        self, request: apb.ListAuditEventsRequest, context: Any
    ) -> apb.ListAuditEventsResponse:
        records, next_token = await self.vault.list_audit_events(
            request.page_size, request.page_token, audit_filter(request)
        )
        return apb.ListAuditEventsResponse(
            events=[
                apb.AuditEvent(
                    time=timestamp(r.time),
                    principal=r.principal,
                    method=r.method,
                    outcome=r.outcome,
                    secret_names=r.secret_names,
                    tool=r.tool,
                    request_id=r.request_id,
                    peer=r.peer,
                    client_request_id=r.client_request_id,
                    missing_count=r.missing_count,
                    count=r.count,
                    match_count=r.match_count,
                    forced=r.forced,
                )
                for r in records
            ],
            next_page_token=next_token,
        )
