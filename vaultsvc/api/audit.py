"""AuditService: the audit trail, newest first."""

from __future__ import annotations

from typing import Any

from interakt.vault.v1 import audit_service_pb2 as apb
from interakt.vault.v1 import audit_service_pb2_grpc as agrpc

from vaultsvc.api.convert import timestamp
from vaultsvc.vault import Vault


class AuditServicer(agrpc.AuditServiceServicer):
    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    async def ListAuditEvents(
        self, request: apb.ListAuditEventsRequest, context: Any
    ) -> apb.ListAuditEventsResponse:
        records, next_token = await self.vault.list_audit_events(
            request.page_size, request.page_token, request.secret_name, request.principal
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
